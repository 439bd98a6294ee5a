"""One module per stage type, each with the same build -> train -> save shape."""
