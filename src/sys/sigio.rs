//! Signal-driven I/O for the sigio model: O_ASYNC, F_SETSIG, F_SETOWN_EX, real-time signals.
