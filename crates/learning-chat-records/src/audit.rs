//! The audit log of administrative actions (key created / revoked, conversation erased).
