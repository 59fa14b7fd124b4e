//! POSIX AIO (glibc): aio_read, aio_write and their completion notification, for the posix-aio model.
