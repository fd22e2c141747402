"""A quickstart-style Flower app that knows nothing of asyncfl on the client side."""
