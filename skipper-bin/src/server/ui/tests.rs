//! The dashboard through `app(state)` with `oneshot`.
