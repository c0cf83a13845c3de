//! End-to-end tests across Tally's services, on the local stack (see `tests/`). A test crate
//! links the services it drives; the services never link each other.
