//! Tally emitter client.
