"""Small pure helpers every layer may use (rank 0: they import nothing else of pyvfio but errors)."""
