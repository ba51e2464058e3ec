//! skipper-registry (work in progress).
