"""The gateway process and the supervisor: listeners, lifespan, workers, the worker channel."""
