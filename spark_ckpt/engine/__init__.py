"""The recovery engine: what checkpointing and recovery need that knows nothing of Spark."""
