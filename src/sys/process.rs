//! fork(2), waitpid(2) and SIGCHLD for the fork model.
