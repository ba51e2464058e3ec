//! The Docker [`Runtime`](crate::Runtime) on bollard.
