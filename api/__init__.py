"""The REST front end for the mobile app (FastAPI). Routes are thin: they validate, authorize, delegate."""
