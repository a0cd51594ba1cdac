"""The deployables as shipped: pex files started as their images start them."""
