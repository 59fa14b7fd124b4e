/* slowfs: a FUSE passthrough filesystem whose file writes stall, for scripts/slow-disk.sh.
 *
 *   slowfs BACKING MOUNTPOINT [--stall-ms N] [--every K] [--stall-sync] [--on]
 *
 * Mirrors the directory BACKING at MOUNTPOINT (foreground, multithreaded). While the stall
 * is on, every K-th data write (counted from when the stall was turned on, so the K-th,
 * 2K-th, ... write after `on`) is held N ms before it reaches BACKING; with --stall-sync,
 * fsync and fdatasync are held N ms too. The writer sees the hold in its write(2):
 *   - the kernel's FUSE write path without the writeback cache is write-through: write(2)
 *     sends FUSE_WRITE and waits for this daemon's reply (fs/fuse/file.c,
 *     fuse_perform_write). libfuse 3 never asks for FUSE_CAP_WRITEBACK_CACHE by default;
 *     init() also clears it, so no `-o writeback_cache` can turn it on.
 *   - the kernel holds the inode lock across that write, so writers of the same file queue
 *     behind a held write, as behind one disk; other files' operations go on (other worker
 *     threads serve them).
 *   - a write(2) bigger than max_write goes out as several FUSE_WRITEs, each counted;
 *     init() asks for 1 MiB (the kernel's limit is 256 pages), the control file shows
 *     what was granted.
 * O_APPEND is the kernel's job: it places each write at its own i_size under that inode
 * lock and sends the offset, so BACKING is opened without O_APPEND and every write is a
 * pwrite at the offset given.
 *
 * Control: the file MOUNTPOINT/.slow-disk, in no directory listing. Reading it gives the
 * state and counters; writing it takes words: `on`, `off`, `once` (on, then off after one
 * held write), `ms=N`, `every=K`, `sync=0|1`. A write to it returns once applied, and
 * `off` releases writes being held. Writes to it are never held.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <fuse.h>
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CTL_NAME ".slow-disk"
#define CTL_PATH "/" CTL_NAME
/* fi->fh of an open control file: no real fd is this large. */
#define CTL_FH UINT64_MAX

static int root_fd = -1;
static struct fuse_session *session; /* set by init(), for hold() */

/* The stall state: `mu` guards everything in it; `cv` wakes held writes when it changes. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int on, once, sync;
	unsigned ms, every;
	uint64_t since_on; /* data writes since the stall was last turned on */
	uint64_t gen;      /* bumped by every `off`: a held write whose gen changed goes */
	uint64_t writes, held, held_sync;
	unsigned max_write, writeback;
} st = {.mu = PTHREAD_MUTEX_INITIALIZER, .ms = 1000, .every = 1};

/* Path relative to BACKING for the *at() calls: "/" is ".", "/a/b" is "a/b". */
static const char *rel(const char *path)
{
	return path[1] ? path + 1 : ".";
}

static int is_ctl(const char *path)
{
	return path && strcmp(path, CTL_PATH) == 0;
}

static int neg_errno(int r)
{
	return r < 0 ? -errno : r;
}

static struct timespec after_ms(struct timespec t, long ms)
{
	t.tv_sec += ms / 1000;
	t.tv_nsec += (ms % 1000) * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

static int before(struct timespec a, struct timespec b)
{
	return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

/* Holds the calling thread ms milliseconds, or until the stall is turned off, or until the
 * session ends (unmount, SIGTERM): libfuse's worker threads run requests with cancellation
 * disabled and its loop joins them, so a held write would keep the helper alive to the end
 * of its hold. Hence waits of at most 100 ms, each followed by a look at the session. */
static void hold(unsigned ms, uint64_t gen)
{
	struct timespec now, until;
	clock_gettime(CLOCK_MONOTONIC, &now);
	until = after_ms(now, ms);
	pthread_mutex_lock(&st.mu);
	while (st.gen == gen && !fuse_session_exited(session) && before(now, until)) {
		struct timespec slice = after_ms(now, 100);
		pthread_cond_timedwait(&st.cv, &st.mu, before(slice, until) ? &slice : &until);
		clock_gettime(CLOCK_MONOTONIC, &now);
	}
	pthread_mutex_unlock(&st.mu);
}

/* Called before each data write (sync = 0) or fsync (sync = 1): holds it if it is due. */
static void maybe_hold(int sync)
{
	unsigned ms = 0;
	uint64_t gen;
	pthread_mutex_lock(&st.mu);
	if (!sync)
		st.writes++;
	if (st.on) {
		if (sync) {
			if (st.sync) {
				ms = st.ms;
				st.held_sync++;
			}
		} else if (++st.since_on % st.every == 0) {
			ms = st.ms;
			st.held++;
			if (st.once)
				st.on = st.once = 0;
		}
	}
	gen = st.gen;
	pthread_mutex_unlock(&st.mu);
	if (ms)
		hold(ms, gen);
}

static int ctl_read(char *buf, size_t size, off_t off)
{
	char text[512];
	pthread_mutex_lock(&st.mu);
	int n = snprintf(text, sizeof text,
			 "stall %s\nstall_ms %u\nevery %u\nonce %d\nstall_sync %d\n"
			 "writes %" PRIu64 "\nheld %" PRIu64 "\nheld_sync %" PRIu64 "\n"
			 "max_write %u\nwriteback_cache %u\n",
			 st.on ? "on" : "off", st.ms, st.every, st.once, st.sync, st.writes,
			 st.held, st.held_sync, st.max_write, st.writeback);
	pthread_mutex_unlock(&st.mu);
	if (off >= n)
		return 0;
	if (size > (size_t)(n - off))
		size = n - off;
	memcpy(buf, text + off, size);
	return (int)size;
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* Applies the words of one write to the control file; nothing is applied if one is bad. */
static int ctl_write(const char *buf, size_t size)
{
	char text[256], *save = NULL;
	if (size >= sizeof text)
		return -EINVAL;
	memcpy(text, buf, size);
	text[size] = 0;
	int on = -1, once = 0, sync = -1;
	unsigned ms = 0, every = 0, v;
	for (char *w = strtok_r(text, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save)) {
		if (!strcmp(w, "on"))
			on = 1;
		else if (!strcmp(w, "off"))
			on = 0;
		else if (!strcmp(w, "once"))
			on = once = 1;
		else if (!strncmp(w, "ms=", 3) && !parse_uint(w + 3, 0, 3600000, &v))
			ms = v ? v : UINT_MAX;
		else if (!strncmp(w, "every=", 6) && !parse_uint(w + 6, 1, UINT_MAX, &v))
			every = v;
		else if (!strncmp(w, "sync=", 5) && !parse_uint(w + 5, 0, 1, &v))
			sync = (int)v;
		else
			return -EINVAL;
	}
	pthread_mutex_lock(&st.mu);
	if (ms)
		st.ms = ms == UINT_MAX ? 0 : ms;
	if (every)
		st.every = every;
	if (sync >= 0)
		st.sync = sync;
	if (on == 1) {
		st.on = 1;
		st.once = once;
		st.since_on = 0;
	} else if (on == 0) {
		st.on = st.once = 0;
		st.gen++;
		pthread_cond_broadcast(&st.cv);
	}
	pthread_mutex_unlock(&st.mu);
	return (int)size;
}

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	session = fuse_get_session(fuse_get_context()->fuse);
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	if (conn->max_write < (1u << 20))
		conn->max_write = 1u << 20;
	pthread_mutex_lock(&st.mu);
	st.max_write = conn->max_write;
	st.writeback = !!(conn->want & FUSE_CAP_WRITEBACK_CACHE);
	pthread_mutex_unlock(&st.mu);
	/* Unlink an open file for real (no .fuse_hidden files), and let ops on open files run
	 * without a path: they use the fd. */
	cfg->hard_remove = 1;
	cfg->nullpath_ok = 1;
	cfg->use_ino = 1;
	return NULL;
}

static int sf_getattr(const char *path, struct stat *s, struct fuse_file_info *fi)
{
	if ((fi && fi->fh == CTL_FH) || is_ctl(path)) {
		memset(s, 0, sizeof *s);
		s->st_mode = S_IFREG | 0600;
		s->st_nlink = 1;
		s->st_size = 0; /* opened direct_io: reads ignore the size */
		return 0;
	}
	if (fi)
		return neg_errno(fstat((int)fi->fh, s));
	return neg_errno(fstatat(root_fd, rel(path), s, AT_SYMLINK_NOFOLLOW));
}

/* Directories are opened in opendir, as readdir may be called without a path
 * (nullpath_ok). */
static int sf_opendir(const char *path, struct fuse_file_info *fi)
{
	int fd = openat(root_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return -e;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	return 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)path, (void)flags;
	DIR *d = (DIR *)(uintptr_t)fi->fh;
	if (off == 0)
		rewinddir(d);
	struct dirent *e;
	errno = 0;
	while ((e = readdir(d))) {
		struct stat s = {.st_ino = e->d_ino, .st_mode = (mode_t)DTTOIF(e->d_type)};
		if (fill(buf, e->d_name, &s, 0, 0))
			break;
	}
	return 0;
}

static int sf_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	closedir((DIR *)(uintptr_t)fi->fh);
	return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
	if (is_ctl(path)) {
		fi->fh = CTL_FH;
		fi->direct_io = 1;
		return 0;
	}
	int fd = openat(root_fd, rel(path), (fi->flags & ~O_APPEND) | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	return 0;
}

/* What is created belongs to the caller, as on a local disk (this helper runs as root). */
static void own(const char *path, int fd)
{
	const struct fuse_context *c = fuse_get_context();
	if (fd >= 0)
		(void)!fchown(fd, c->uid, c->gid);
	else
		(void)!fchownat(root_fd, rel(path), c->uid, c->gid, AT_SYMLINK_NOFOLLOW);
}

static int sf_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	if (is_ctl(path))
		return sf_open(path, fi);
	int fd = openat(root_fd, rel(path), (fi->flags & ~O_APPEND) | O_CREAT | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	own(path, fd);
	fi->fh = (uint64_t)fd;
	return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh == CTL_FH)
		return ctl_read(buf, size, off);
	ssize_t n = pread((int)fi->fh, buf, size, off);
	return n < 0 ? -errno : (int)n;
}

static int sf_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh == CTL_FH)
		return ctl_write(buf, size);
	maybe_hold(0);
	size_t done = 0;
	while (done < size) {
		ssize_t n = pwrite((int)fi->fh, buf + done, size - done, off + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return done ? (int)done : -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (int)done;
}

static int sf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh == CTL_FH)
		return 0;
	maybe_hold(1);
	return neg_errno(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int sf_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh != CTL_FH)
		close((int)fi->fh);
	return 0;
}

static int sf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	if ((fi && fi->fh == CTL_FH) || is_ctl(path))
		return 0; /* `echo on > .slow-disk` truncates first */
	if (fi)
		return neg_errno(ftruncate((int)fi->fh, size));
	int fd = openat(root_fd, rel(path), O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = neg_errno(ftruncate(fd, size));
	close(fd);
	return r;
}

static int sf_mkdir(const char *path, mode_t mode)
{
	if (is_ctl(path))
		return -EEXIST;
	if (mkdirat(root_fd, rel(path), mode) < 0)
		return -errno;
	own(path, -1);
	return 0;
}

static int sf_unlink(const char *path)
{
	return is_ctl(path) ? -EPERM : neg_errno(unlinkat(root_fd, rel(path), 0));
}

static int sf_rmdir(const char *path)
{
	return neg_errno(unlinkat(root_fd, rel(path), AT_REMOVEDIR));
}

static int sf_rename(const char *from, const char *to, unsigned int flags)
{
	if (is_ctl(from) || is_ctl(to))
		return -EPERM;
	return neg_errno((int)syscall(SYS_renameat2, root_fd, rel(from), root_fd, rel(to), flags));
}

static int sf_link(const char *from, const char *to)
{
	if (is_ctl(from) || is_ctl(to))
		return -EPERM;
	return neg_errno(linkat(root_fd, rel(from), root_fd, rel(to), 0));
}

static int sf_symlink(const char *target, const char *path)
{
	if (is_ctl(path))
		return -EEXIST;
	if (symlinkat(target, root_fd, rel(path)) < 0)
		return -errno;
	own(path, -1);
	return 0;
}

static int sf_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n = readlinkat(root_fd, rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

static int sf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	if ((fi && fi->fh == CTL_FH) || is_ctl(path))
		return -EPERM;
	if (fi)
		return neg_errno(fchmod((int)fi->fh, mode));
	return neg_errno(fchmodat(root_fd, rel(path), mode, 0));
}

static int sf_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	if ((fi && fi->fh == CTL_FH) || is_ctl(path))
		return -EPERM;
	if (fi)
		return neg_errno(fchown((int)fi->fh, uid, gid));
	return neg_errno(fchownat(root_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int sf_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	if ((fi && fi->fh == CTL_FH) || is_ctl(path))
		return 0;
	if (fi)
		return neg_errno(futimens((int)fi->fh, tv));
	return neg_errno(utimensat(root_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static int sf_statfs(const char *path, struct statvfs *s)
{
	(void)path;
	return neg_errno(fstatvfs(root_fd, s));
}

static int sf_fallocate(const char *path, int mode, off_t off, off_t len,
			struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh == CTL_FH)
		return -EOPNOTSUPP;
	return neg_errno(fallocate((int)fi->fh, mode, off, len));
}

static const struct fuse_operations ops = {
	.init = sf_init,
	.getattr = sf_getattr,
	.opendir = sf_opendir,
	.readdir = sf_readdir,
	.releasedir = sf_releasedir,
	.open = sf_open,
	.create = sf_create,
	.read = sf_read,
	.write = sf_write,
	.fsync = sf_fsync,
	.release = sf_release,
	.truncate = sf_truncate,
	.mkdir = sf_mkdir,
	.unlink = sf_unlink,
	.rmdir = sf_rmdir,
	.rename = sf_rename,
	.link = sf_link,
	.symlink = sf_symlink,
	.readlink = sf_readlink,
	.chmod = sf_chmod,
	.chown = sf_chown,
	.utimens = sf_utimens,
	.statfs = sf_statfs,
	.fallocate = sf_fallocate,
};

static void usage(void)
{
	fprintf(stderr,
		"usage: slowfs BACKING MOUNTPOINT [--stall-ms N] [--every K] [--stall-sync] [--on]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		usage();
	const char *backing = argv[1], *mnt = argv[2];
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--stall-ms") && i + 1 < argc) {
			if (parse_uint(argv[++i], 0, 3600000, &st.ms))
				usage();
		} else if (!strcmp(argv[i], "--every") && i + 1 < argc) {
			if (parse_uint(argv[++i], 1, UINT_MAX, &st.every))
				usage();
		} else if (!strcmp(argv[i], "--stall-sync")) {
			st.sync = 1;
		} else if (!strcmp(argv[i], "--on")) {
			st.on = 1;
		} else {
			usage();
		}
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&st.cv, &ca);

	root_fd = open(backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0) {
		fprintf(stderr, "slowfs: %s: %s\n", backing, strerror(errno));
		return 1;
	}
	/* Foreground; allow_other: the servers under test may run as another user than the
	 * mounter (root may always set it), and default_permissions: the kernel checks the mode
	 * bits, as on a local disk; fsname and subtype name it in mount listings. */
	char *fargv[] = {argv[0], "-f", "-o",
			 "allow_other,default_permissions,fsname=slowdisk,subtype=slowdisk",
			 (char *)mnt, NULL};
	umask(0);
	return fuse_main(5, fargv, &ops, NULL);
}
