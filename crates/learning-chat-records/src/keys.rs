//! API keys: the source of truth (servers keep every key in memory and poll for changes).
