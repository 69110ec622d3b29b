"""A local stand-in for the Hugging Face hub (server.py) and the repositories it serves (repos.py)."""
