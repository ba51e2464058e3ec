//! skipper-npm (work in progress).
