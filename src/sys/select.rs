//! select(2) and its fd_set, for the select model.
