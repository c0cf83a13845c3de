//! The emitter client against a running ingest.
