"""Training policies as callbacks: fault tolerance, the fast path, pictures, prediction files."""
