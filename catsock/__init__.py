"""catsock: the trio runtime of the gateway."""
