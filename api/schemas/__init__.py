"""The request and response models of the API, one module per router, apart from the routes."""
