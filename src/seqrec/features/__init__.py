"""Features: sessions (in memory and out of core), the item co-occurrence graph, InfoNCE item embeddings."""
