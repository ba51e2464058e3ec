//! In-memory fakes of the backends, for tests and for embedders' own tests.
