"""Side-by-side benchmarks of guildcore against its peers; run ``python -m benchmarks``."""
