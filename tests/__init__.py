"""twistproxy's tests."""
