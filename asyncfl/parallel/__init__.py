"""Pipeline parallelism with microbatches, and data + pipeline parallelism together (the
homework's Part B). Stands apart from the federated code."""
