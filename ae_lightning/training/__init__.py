"""Training policies: fault tolerance, pictures and prediction files (callbacks), and the fast path's steps (fast)."""
