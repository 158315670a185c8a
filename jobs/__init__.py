"""arq worker for settle: settles transfers and sweeps stuck ones."""
