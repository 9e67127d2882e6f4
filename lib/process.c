/*
 * Process objects: start, join, exit codes, signals, the current and parent process, the
 * children this process has started, and what happens to them when it ends.
 */
#include "internal.h"
#include "trace.h"

#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A process object with room for its name and identity when they are short (the default
 * ones are): the common object then takes no malloc and no free (below). */
typedef struct {
  mp_process_t proc; /* first: a slot's address is its process's */
  char name[32];
  char identity[24];
} proc_slot_t;

#define SLOTS 8
#define EXIT_HOOKS 4

/*
 * What this process knows of itself, and the objects of its first children. Each first
 * write to a page after fork() is a fault (copy-on-write, or reuse once the child has gone;
 * 14-18 us on a virtual machine): a forked child writes these first, and the parent writes
 * its child's object and the registry after every fork. So they share one page, and neither
 * side writes another page it can avoid (docs/architecture.md, "Where the time goes").
 */
static struct {
  mp_process_t current;
  mp_process_t parent;
  bool has_parent;
  bool parent_forked_us; /* the parent is our parent for the kernel (fork, spawn) */
  pid_t watched_parent; /* the process whose death kills us, see die_with() */
  int own_sentinel;     /* without pidfds: the socket end that closes when we end */
  int report_sock;      /* forkserver child: where EXITED goes */
  unsigned long children_created; /* the last part of a child's identity */
  mp_process_t *registry; /* started children not yet closed: see below */
  /* The registries of the processes this one was forked from, nearest first: copies of
   * their objects, not this process's to join or free, kept where a leak checker finds
   * them (memcheck would call them lost). */
  mp_process_t *inherited[6];
  pthread_mutex_t executable_lock; /* guards executable, below */
  int death_signal; /* SIGRTMAX, a libc call read once here rather than in every child */
  /* mp__on_exit's hooks, [MP__EXIT_FIRST] and [MP__EXIT_LAST]: here because every child reads
   * them at its end, and each page a child touches first costs it (shadow paging). */
  void (*exit_hooks[2][EXIT_HOOKS])(void);
  /* Guards registry, children_created and the slots: see below. */
  pthread_mutex_t registry_lock;
  uint32_t slots_used; /* bit i: slots[i] holds a process object */
  proc_slot_t slots[SLOTS];
} me __attribute__((aligned(4096))) = {
    .current = {.object_kind = MP__KIND_PROCESS,
                .kind = MP__PROC_SELF,
                .state = MP__STARTED,
                .name = "MainProcess",
                .identity = "",
                .pidfd = -1,
                .status_fd = -1},
    .parent = {.object_kind = MP__KIND_PROCESS,
               .kind = MP__PROC_PARENT,
               .state = MP__STARTED,
               .pidfd = -1,
               .status_fd = -1},
    .own_sentinel = -1,
    .report_sock = -1,
    .executable_lock = PTHREAD_MUTEX_INITIALIZER,
    .registry_lock = PTHREAD_MUTEX_INITIALIZER,
};

static char executable[PATH_MAX]; /* "" means the running executable */

_Static_assert(sizeof me <= 4096, "what a child writes of itself stays in one page");
_Static_assert(SLOTS <= 32, "slots_used has a bit per slot");

/* The registry holds the started children not yet closed, for active_children() and the
 * exit; they stay reachable there until the program closes them. */
/* A zeroed process object: a free slot, else from malloc (more than SLOTS at once). A forked
 * child keeps its parent's slots taken: the objects in them are the parent's, or were
 * created before the fork and are the child's own copies to start or close. */
static proc_slot_t *slot_take(unsigned long *number) {
  proc_slot_t *slot = NULL;
  pthread_mutex_lock(&me.registry_lock);
  *number = ++me.children_created;
  for (unsigned i = 0; i < SLOTS && !slot; i++) {
    if (!(me.slots_used & (1u << i))) {
      me.slots_used |= 1u << i;
      slot = &me.slots[i];
    }
  }
  pthread_mutex_unlock(&me.registry_lock);
  if (!slot)
    return calloc(1, sizeof *slot);
  memset(slot, 0, sizeof *slot);
  return slot;
}

/* Frees a closed process object: its slot again, or its memory. */
static void slot_give_back(proc_slot_t *slot) {
  uintptr_t at = (uintptr_t)slot - (uintptr_t)me.slots;
  if (at >= sizeof me.slots) {
    free(slot);
    return;
  }
  pthread_mutex_lock(&me.registry_lock);
  me.slots_used &= ~(1u << (at / sizeof *slot));
  pthread_mutex_unlock(&me.registry_lock);
}

static void registry_remove(mp_process_t *proc) {
  pthread_mutex_lock(&me.registry_lock);
  if (proc->prev)
    proc->prev->next = proc->next;
  else if (me.registry == proc)
    me.registry = proc->next;
  if (proc->next)
    proc->next->prev = proc->prev;
  proc->prev = proc->next = NULL;
  pthread_mutex_unlock(&me.registry_lock);
}

static void registry_add(mp_process_t *proc) {
  pthread_mutex_lock(&me.registry_lock);
  proc->prev = NULL;
  proc->next = me.registry;
  if (me.registry)
    me.registry->prev = proc;
  me.registry = proc;
  pthread_mutex_unlock(&me.registry_lock);
}

/* The registry's members, copied so that joining them needs no lock; caller frees. */
static mp_process_t **registry_snapshot(size_t *count) {
  pthread_mutex_lock(&me.registry_lock);
  size_t n = 0;
  for (mp_process_t *p = me.registry; p; p = p->next)
    n++;
  mp_process_t **list = malloc((n ? n : 1) * sizeof *list);
  *count = 0;
  if (list)
    for (mp_process_t *p = me.registry; p; p = p->next)
      list[(*count)++] = p;
  pthread_mutex_unlock(&me.registry_lock);
  return list;
}

/* --------------------------- ending and reaping --------------------------- */

/* What becomes readable when the child ends: its pidfd, or the fd its status comes on. */
static int sentinel_of(const mp_process_t *proc) {
  return proc->pidfd >= 0 ? proc->pidfd : proc->status_fd;
}

static int exitcode_of(int wait_status) {
  if (WIFEXITED(wait_status))
    return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status))
    return -WTERMSIG(wait_status);
  return wait_status;
}

/* Drops the references held for the child: it can use the objects no more. */
static void release_held(mp_process_t *proc) {
  for (size_t i = 0; i < proc->n_held; i++)
    proc->held[i].release(proc->held[i].obj);
  free(proc->held);
  proc->held = NULL;
  proc->n_held = 0;
}

/* A child's state moves from CREATED to STARTED (mp_process_start) and to ENDED (try_reap,
 * under reap_lock) while other threads look at it without the lock: a join's first look,
 * is_alive, active_children, the checks of every call. So it is stored with release, after
 * the exit code and status_lost it vouches for, and read with acquire. */
static mp__proc_state_t state_of(const mp_process_t *proc) {
  return __atomic_load_n(&proc->state, __ATOMIC_ACQUIRE);
}

static void set_state(mp_process_t *proc, mp__proc_state_t state) {
  __atomic_store_n(&proc->state, state, __ATOMIC_RELEASE);
}

/* Collects the child's status if it has ended: true once it has. */
static bool try_reap(mp_process_t *proc) {
  pthread_mutex_lock(&proc->reap_lock);
  int wait_status, rc;
  if (state_of(proc) == MP__STARTED &&
      (rc = proc->ops->collect(proc, &wait_status)) != -EAGAIN) {
    /* The fds stay open until mp_process_close(): another thread may be polling them,
     * and the sentinel handed out must stay valid. */
    proc->status_lost = rc == -ECHILD;
    proc->exitcode = proc->status_lost ? 0 : exitcode_of(wait_status);
    set_state(proc, MP__ENDED);
    MP__TRACE(process_reaped, proc);
    release_held(proc);
  }
  bool ended = state_of(proc) == MP__ENDED;
  pthread_mutex_unlock(&proc->reap_lock);
  return ended;
}

/*
 * Waits for a started child to end, until deadline: 1 ended, 0 still running, or -errno.
 * Without a pidfd the sentinel socket could have been copied by another thread's fork()
 * and never end: there, also look at the child itself every 50 ms.
 */
#define NO_PIDFD_LOOK_NS 50000000

static int wait_child(mp_process_t *proc, int64_t deadline, const mp__sigint_t *sigint) {
  for (;;) {
    if (state_of(proc) == MP__ENDED)
      return 1;
    int64_t until = deadline;
    if (proc->pidfd < 0 && deadline - mp__now_ns() > NO_PIDFD_LOOK_NS)
      until = mp__now_ns() + NO_PIDFD_LOOK_NS;
    int ready = mp__poll_fd_sig(sentinel_of(proc), POLLIN, until, sigint);
    if (ready < 0)
      return ready;
    if (ready > 0) /* the collect need not look again (forkserver's) */
      __atomic_store_n(&proc->end_seen, true, __ATOMIC_RELAXED);
    if (try_reap(proc))
      return 1;
    if (ready == 0 && until == deadline)
      return 0;
  }
}

/* A non-blocking look: is the started child still running? */
static bool child_running(mp_process_t *proc) {
  return state_of(proc) == MP__STARTED && wait_child(proc, 0, NULL) == 0;
}

int mp__popen_collect_child(mp_process_t *proc, int *wait_status) {
  pid_t r;
  do
    r = waitpid(proc->pid, wait_status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0)
    return -EAGAIN;
  if (r < 0) /* someone else reaped it (waitpid(-1) in the program): the status is lost */
    return -ECHILD;
  return 0;
}

int mp__sentinel_open(int sentinel[2]) {
  sentinel[0] = sentinel[1] = -1;
  /* A socket, not a pipe: at end of file it polls readable (POLLIN), as a sentinel must;
   * a pipe reports only POLLHUP. */
  if (mp__have_pidfd() || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sentinel) == 0)
    return 0;
  return mp__syserror("socketpair for the child's sentinel");
}

int mp__popen_watch(mp_process_t *proc, pid_t pid, const int sentinel[2]) {
  proc->pid = pid;
  proc->pidfd = proc->status_fd = -1;
  if (sentinel[0] >= 0) {
    /* The child holds the only write end: end of file on ours means it has ended. */
    close(sentinel[1]);
    proc->status_fd = sentinel[0];
    return 0;
  }
  proc->pidfd = mp__pidfd_open(pid);
  if (proc->pidfd >= 0)
    return 0;
  if (errno == ESRCH) {
    /* Ended and already reaped by the program (SIGCHLD ignored, or its own waitpid()):
     * started, ended, status lost; and its pid may be anyone's now, so no kill. */
    proc->status_lost = true;
    return 0;
  }
  int rc = mp__syserror("pidfd_open for child %d", (int)pid);
  mp__popen_discard(proc);
  return rc;
}

static void close_handles(mp_process_t *proc) {
  if (proc->pidfd >= 0)
    close(proc->pidfd);
  if (proc->status_fd >= 0)
    close(proc->status_fd);
  proc->pidfd = proc->status_fd = -1;
}

void mp__popen_discard(mp_process_t *proc) {
  /* pid > 0: kill(0) or kill(-1) would signal our group or every process we may. */
  if (proc->pid > 0) {
    kill(proc->pid, SIGKILL);
    while (waitpid(proc->pid, NULL, 0) < 0 && errno == EINTR)
      ;
  }
  close_handles(proc);
  proc->pid = 0;
}

/* -------------------------- the parent's pidfd -------------------------- */

/*
 * A child its parent made itself (fork, spawn) opens the parent's pidfd when first asked,
 * not at its start: a system call, and a file to close at its end, off every start
 * (docs/architecture.md, "Where the time goes"). The pid is still the parent's as long as
 * the parent is ours (getppid), which is looked at after the open; a parent gone by then
 * gets a sentinel that is ready at once and stays so, a pipe with no writer. A fork
 * server's child has no such test (the server is its parent), and its spare has the pidfd
 * already.
 */
#define PIDFD_LATER (-2)

/* The parent's pidfd (or the writerless pipe of a parent gone), opened now if it was not:
 * -1 if it cannot be (no pidfds, no fd left), and then the callers look by pid. */
static int parent_pidfd(void) {
  int fd = __atomic_load_n(&me.parent.pidfd, __ATOMIC_ACQUIRE);
  if (fd != PIDFD_LATER)
    return fd;
  int opened = mp__pidfd_open(me.parent.pid);
  if (opened >= 0 && getppid() != me.parent.pid) {
    close(opened); /* the pid may be another process's by now */
    opened = -1;
    errno = ESRCH;
  }
  int ended[2];
  if (opened < 0 && errno == ESRCH && pipe2(ended, O_CLOEXEC) == 0) {
    close(ended[1]); /* at end of file for ever: ready whoever reads it */
    opened = ended[0];
  }
  if (opened < 0)
    return -1;
  /* Another thread may have opened it meanwhile: one is kept. */
  if (!__atomic_compare_exchange_n(&me.parent.pidfd, &fd, opened, false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    close(opened);
    return fd;
  }
  return opened;
}

/* Before any fork of a process whose parent's pidfd is still to open: open it now, as a
 * child forked here could not (the pid it would look up is its grandparent's). */
static void before_fork(void) {
  if (__atomic_load_n(&me.parent.pidfd, __ATOMIC_RELAXED) == PIDFD_LATER)
    parent_pidfd();
}

/* ------------------------ the end of this process ------------------------ */

/* Python's _exit_function: terminate the daemon children, then join every child. */
static void end_children(void) {
  size_t count;
  mp_process_t **children = registry_snapshot(&count);
  if (!children)
    return;
  for (size_t i = 0; i < count; i++)
    if (children[i]->daemon && child_running(children[i]))
      mp_process_terminate(children[i]);
  for (size_t i = 0; i < count; i++)
    wait_child(children[i], INT64_MAX, NULL);
  free(children);
}


void mp__on_exit(void (*fn)(void), int when) {
  for (size_t i = 0; i < EXIT_HOOKS; i++) {
    if (!me.exit_hooks[when][i]) {
      me.exit_hooks[when][i] = fn;
      return;
    }
  }
}

MP__CHILD_TEXT static void run_exit_hooks(int when) {
  for (size_t i = 0; i < EXIT_HOOKS && me.exit_hooks[when][i]; i++)
    me.exit_hooks[when][i]();
}

static void at_exit(void) {
  run_exit_hooks(MP__EXIT_FIRST);
  end_children();
  run_exit_hooks(MP__EXIT_LAST);
}

/*
 * In a child of any fork(), the program's own included: forget the parent's children and
 * its fork server, close the parent's sentinel (it must close when the parent ends, not
 * when this child does), and free locks another thread may have held at the fork. Only a
 * child handler, and it writes only what needs changing: see `me` above.
 */
MP__CHILD_TEXT static void after_fork_in_child(void) {
  if (me.registry) {
    memmove(me.inherited + 1, me.inherited, sizeof me.inherited - sizeof me.inherited[0]);
    me.inherited[0] = me.registry;
    me.registry = NULL;
  }
  if (me.own_sentinel >= 0) {
    mp__raw_syscall(SYS_close, me.own_sentinel, 0, 0, 0);
    me.own_sentinel = -1;
  }
  if (me.report_sock >= 0) {
    mp__raw_syscall(SYS_close, me.report_sock, 0, 0, 0);
    me.report_sock = -1;
  }
  if (me.parent_forked_us) /* our parent process object is our parent's parent now */
    me.parent_forked_us = false;
  mp__reset_lock(&me.registry_lock);
  mp__reset_lock(&me.executable_lock);
  mp__fd_after_fork();
}

/* mp_wait() on a process handle: ready once it has ended, woken by its sentinel. A process
 * not started is an error; the current process never ends and has no sentinel. */
static int process_ready(void *obj) {
  mp_process_t *proc = obj;
  if (proc->kind == MP__PROC_CHILD && state_of(proc) == MP__CREATED)
    return mp__error(MP_ENOTSTARTED, "mp_wait: process '%s' has not been started", proc->name);
  int alive = mp_process_is_alive(proc);
  return alive < 0 ? alive : !alive;
}

static int process_poll_fd(void *obj) {
  return mp_process_sentinel(obj);
}

static const mp__waitable_ops_t process_waitable = {process_ready, process_poll_fd};

const char *mp__current_name(void) {
  return me.current.name;
}

/* Prioritized, so that it runs before spawn.c's take-over of a spawned child. */
__attribute__((constructor(102))) static void install_handlers(void) {
  me.death_signal = SIGRTMAX;
  mp__trace_name_source(mp__current_name);
  atexit(at_exit);
  pthread_atfork(before_fork, NULL, after_fork_in_child);
  mp__waitable_register(MP__KIND_PROCESS, &process_waitable);
}

/* ---------------------------- a child's life ---------------------------- */

/*
 * A child dies with its parent through PR_SET_PDEATHSIG. The kernel sends that signal when
 * the parent *thread* ends, not only the process: a child started from a short-lived
 * thread would be killed while its parent process lives on. So the signal is a real-time
 * one (SIGRTMAX, me.death_signal) whose handler checks whether the parent process is really
 * gone (the child has been reparented) before it kills the child.
 */

/* Kills this process unless its parent is still `parent`: all inline system calls, as
 * everything a forked child runs before its target (MP__CHILD_TEXT). */
MP__CHILD_TEXT static void die_unless_parent(pid_t parent) {
  if (mp__raw_syscall(SYS_getppid, 0, 0, 0, 0) != parent)
    mp__raw_syscall(SYS_kill, mp__raw_syscall(SYS_getpid, 0, 0, 0, 0), SIGKILL, 0, 0);
}

MP__CHILD_TEXT static void on_parent_thread_exit(int sig) {
  (void)sig;
  die_unless_parent(me.watched_parent);
}

/*
 * The death signal's handler is installed by rt_sigaction itself, as the kernel takes it:
 * libc's sigaction() would cost the child a fault on its code page. On x86-64 a handler
 * returns through a restorer of its own (rt_sigreturn); elsewhere through libc's sigaction.
 */
#if defined(__x86_64__) || defined(__aarch64__)
#define KERNEL_SA_RESTORER 0x04000000
struct kernel_sigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  uint64_t mask;
};
#if defined(__x86_64__)
void mp__sigreturn(void);
__asm__(".pushsection .text.hot.mp_child,\"ax\",@progbits\n"
        ".globl mp__sigreturn\n"
        ".hidden mp__sigreturn\n"
        ".type mp__sigreturn,@function\n"
        "mp__sigreturn:\n"
        "  movq $" MP__STR(SYS_rt_sigreturn) ", %rax\n"
        "  syscall\n"
        ".size mp__sigreturn, .-mp__sigreturn\n"
        ".popsection\n");
#endif

MP__CHILD_TEXT static bool catch_death_signal(int sig) {
  struct kernel_sigaction sa = {.handler = on_parent_thread_exit, .flags = SA_RESTART};
#if defined(__x86_64__)
  sa.flags |= KERNEL_SA_RESTORER;
  sa.restorer = mp__sigreturn;
#endif
  return mp__raw_syscall(SYS_rt_sigaction, sig, (long)&sa, 0, sizeof sa.mask) == 0;
}
#else
static bool catch_death_signal(int sig) {
  struct sigaction sa = {.sa_handler = on_parent_thread_exit, .sa_flags = SA_RESTART};
  return sigaction(sig, &sa, NULL) == 0;
}
#endif

MP__CHILD_TEXT static void die_with(pid_t real_parent) {
  me.watched_parent = real_parent;
  /* Where the signal cannot be had (valgrind keeps SIGRTMAX), die on any parent-thread
   * exit rather than outlive the parent. */
  int signal_to_die_by = SIGKILL;
  if (catch_death_signal(me.death_signal)) {
    mp__kernel_sigset_t unblock = {{0}};
    MP__SIGSET_ADD(&unblock, me.death_signal);
    mp__raw_syscall(SYS_rt_sigprocmask, SIG_UNBLOCK, (long)&unblock, 0, sizeof unblock);
    signal_to_die_by = me.death_signal;
  }
  mp__raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, signal_to_die_by, 0, 0);
  /* The parent may have died before the prctl: then no signal will ever come. */
  die_unless_parent(real_parent);
}

MP__CHILD_TEXT void mp__child_init(const mp__child_info_t *info) {
  /* The strings live as long as the child: a forked child's are its copies of the
   * parent's, a spawned child's are in its request (static storage, or allocated). */
  me.current.name = (char *)info->name;
  me.current.name_owned = info->name_owned;
  me.current.identity = (char *)info->identity;
  me.children_created = 0;
  me.registry = NULL;
  me.parent.pid = info->parent_pid;
  me.parent.name = (char *)info->parent_name;
  me.parent.name_owned = info->parent_name_owned;
  if (me.parent.pidfd >= 0) /* a forked child inherits its parent's own parent pidfd */
    mp__raw_syscall(SYS_close, me.parent.pidfd, 0, 0, 0);
  /* The parent's answer, when it forked us: util.c's cached one is on a page this child
   * would otherwise touch for it alone. */
  bool pidfds = info->pidfds ? info->pidfds > 0 : mp__have_pidfd();
  if (info->parent_pidfd > 0)
    me.parent.pidfd = info->parent_pidfd;
  else if (pidfds && info->real_parent == info->parent_pid)
    me.parent.pidfd = PIDFD_LATER;
  else
    me.parent.pidfd = pidfds ? mp__pidfd_open(info->parent_pid) : -1;
  me.has_parent = true;
  me.parent_forked_us = info->real_parent == info->parent_pid;
  me.own_sentinel = info->sentinel;
  me.report_sock = info->report_sock;
  if (info->die_with_parent)
    die_with(info->real_parent);
  MP__TRACE(process_child, info->name);
}

MP__CHILD_TEXT void mp__child_prepare(void) {
  me.children_created = 0; /* as mp__child_init() sets it */
}

MP__CHILD_TEXT void mp__child_exit(int code, bool exec_image) {
  MP__TRACE(process_exit, code);
  if (exec_image)
    exit(code & 0xff); /* its own atexit handlers, ours included, end its children */
  run_exit_hooks(MP__EXIT_FIRST);
  if (me.registry)
    end_children();
  run_exit_hooks(MP__EXIT_LAST);
  mp__flush_std_streams();
  if (me.report_sock >= 0) {
    mp__reply_t exited = {MP__REC_EXITED, code & 0xff};
    mp__send_record(me.report_sock, &exited, sizeof exited, -1);
  }
  _exit(code & 0xff);
}

/* ---------------------------- the public API ---------------------------- */

/* The executable spawn and the fork server run (spawn.c): Python keeps it in spawn.py. */
int mp_set_executable(const char *path) {
  if (path && (!*path || strlen(path) >= sizeof executable))
    return mp__error(MP_EINVAL, "mp_set_executable: the path is empty or longer than %zu",
                     sizeof executable - 1);
  pthread_mutex_lock(&me.executable_lock);
  snprintf(executable, sizeof executable, "%s", path ? path : "");
  pthread_mutex_unlock(&me.executable_lock);
  return 0;
}

int mp__executable(char *buf, size_t cap) {
  pthread_mutex_lock(&me.executable_lock);
  size_t len = strlen(executable);
  if (len && len < cap)
    memcpy(buf, executable, len + 1);
  pthread_mutex_unlock(&me.executable_lock);
  if (len)
    return len < cap ? 0 : mp__error(MP_EINVAL, "executable path too long");
  /* The path, not /proc/self/exe itself: under valgrind only the path names the program. */
  ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
  if (n < 0)
    return mp__syserror("readlink /proc/self/exe");
  buf[n] = '\0';
  /* Rebuilt or removed while running: /proc/self/exe still runs the same build. */
  static const char deleted[] = " (deleted)";
  size_t tail = sizeof deleted - 1;
  if ((size_t)n > tail && strcmp(buf + n - tail, deleted) == 0)
    snprintf(buf, cap, "/proc/self/exe");
  return 0;
}

/* a, b and c joined, in buf if they fit, else in a malloc'ed string (NULL: no memory).
 * No snprintf: its frames reach a stack page deeper, one more to copy after a fork. */
static char *join3(char *buf, size_t cap, const char *a, const char *b, const char *c) {
  size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
  char *out = buf;
  if (la + lb + lc >= cap && !(out = malloc(la + lb + lc + 1))) /* string lengths: no overflow */
    return NULL;
  memcpy(out, a, la);
  memcpy(out + la, b, lb);
  memcpy(out + la + lb, c, lc + 1);
  return out;
}

/* mp_process_create once context.c has resolved the context to its start method's ops. */
int mp__process_create(mp_process_t **out, const mp__popen_ops_t *ops, mp_target_t target,
                       const void *arg, size_t size, const char *name) {
  if (!out || !target)
    return mp__error(MP_EINVAL, "mp_process_create: %s is NULL", out ? "target" : "proc");
  if (!arg && size > 0)
    return mp__error(MP_EINVAL, "mp_process_create: arg is NULL but size is %zu", size);
  unsigned long number;
  proc_slot_t *slot = slot_take(&number);
  if (!slot)
    return mp__error(MP_ENOMEM, "mp_process_create: no memory for the process");
  mp_process_t *proc = &slot->proc;
  proc->object_kind = MP__KIND_PROCESS;
  proc->kind = MP__PROC_CHILD;
  proc->state = MP__CREATED;
  proc->ops = ops;
  proc->target = target;
  proc->size = size;
  proc->die_with_parent = true;
  proc->pidfd = proc->status_fd = -1;
  pthread_mutex_init(&proc->reap_lock, NULL);

  char digits[24], *d = digits + sizeof digits;
  *--d = '\0';
  do
    *--d = (char)('0' + number % 10);
  while (number /= 10);
  proc->identity = join3(slot->identity, sizeof slot->identity, me.current.identity,
                         *me.current.identity ? ":" : "", d);
  if (proc->identity)
    proc->name = name ? join3(slot->name, sizeof slot->name, name, "", "")
                      : join3(slot->name, sizeof slot->name, "Process-", proc->identity, "");
  proc->name_owned = proc->name != slot->name;
  proc->arg = size ? malloc(size) : NULL;
  if (!proc->identity || !proc->name || (size && !proc->arg)) {
    mp_process_close(proc);
    return mp__error(MP_ENOMEM, "mp_process_create: no memory for a %zu-byte argument",
                     size);
  }
  if (size)
    memcpy(proc->arg, arg, size);
  *out = proc;
  return 0;
}

/* Checks that proc is a child handle; `what` names the caller in the message. */
static int check_child(const mp_process_t *proc, const char *what) {
  if (!proc)
    return mp__error(MP_EINVAL, "%s: proc is NULL", what);
  if (proc->kind != MP__PROC_CHILD)
    return mp__error(MP_ENOTCHILD, "%s: the %s process is not a child of this process",
                     what, proc->kind == MP__PROC_SELF ? "current" : "parent");
  return 0;
}

static int check_not_started(const mp_process_t *proc, const char *what) {
  int rc = check_child(proc, what);
  if (rc == 0 && state_of(proc) != MP__CREATED)
    rc = mp__error(MP_ESTARTED, "%s: process '%s' has already been started", what,
                   proc->name);
  return rc;
}

static int check_started(const mp_process_t *proc, const char *what) {
  int rc = check_child(proc, what);
  if (rc == 0 && state_of(proc) == MP__CREATED)
    rc = mp__error(MP_ENOTSTARTED, "%s: process '%s' has not been started", what,
                   proc->name);
  return rc;
}

/*
 * Only the process that started a child can wait for it. A process forked from it since (the
 * program's own fork(), or a fork-method child that finds the handle in a global or its
 * argument) holds a copy of the object, whose waitpid() fails with ECHILD: that says nothing
 * of the child's end. Python asserts "can only join a child process" there. An object not
 * started is the copy's own to start or close.
 */
static int check_owner(const mp_process_t *proc, const char *what) {
  if (state_of(proc) == MP__CREATED || proc->owner == getpid())
    return 0;
  return mp__error(MP_ENOTCHILD,
                   "%s: '%s' is a child of process %d, not of this one: this is a copy "
                   "of its object, forked since it started",
                   what, proc->name, (int)proc->owner);
}

int mp_process_set_daemon(mp_process_t *proc, bool daemon) {
  int rc = check_not_started(proc, "mp_process_set_daemon");
  if (rc == 0)
    proc->daemon = daemon;
  return rc;
}

bool mp_process_daemon(const mp_process_t *proc) {
  return proc && proc->daemon;
}

int mp_process_set_die_with_parent(mp_process_t *proc, bool die_with_parent) {
  int rc = check_not_started(proc, "mp_process_set_die_with_parent");
  if (rc == 0)
    proc->die_with_parent = die_with_parent;
  return rc;
}

int mp_process_set_name(mp_process_t *proc, const char *name) {
  if (!proc || !name)
    return mp__error(MP_EINVAL, "mp_process_set_name: %s is NULL", proc ? "name" : "proc");
  char *copy = strdup(name);
  if (!copy)
    return mp__error(MP_ENOMEM, "copying a process name");
  if (proc->name_owned)
    free(proc->name);
  proc->name = copy;
  proc->name_owned = true;
  return 0;
}

const char *mp_process_name(const mp_process_t *proc) {
  return proc ? proc->name : NULL;
}

/* Kinds of shared objects that carry fds, and how to pass one (see internal.h). */
#define PASSABLE_KINDS 8

static struct {
  uint32_t kind;
  mp__pass_fn pass;
} passables[PASSABLE_KINDS];

/* Called from constructors, before any thread of the program runs. */
void mp__passable_register(uint32_t kind, mp__pass_fn pass) {
  for (size_t i = 0; i < PASSABLE_KINDS; i++) {
    if (passables[i].pass == NULL || passables[i].kind == kind) {
      passables[i].kind = kind;
      passables[i].pass = pass;
      return;
    }
  }
}

/*
 * Python pickles each argument, and a connection reduces to its fd. Here the argument is
 * raw bytes: every aligned word that points into the arena at a registered kind word is
 * taken for a handle, and its kind's pass() checks that it is one, live in this process.
 */
static int pass_handles_in_arg(mp_process_t *proc) {
  for (size_t at = 0; at + sizeof(uintptr_t) <= proc->size; at += sizeof(uintptr_t)) {
    uintptr_t word;
    memcpy(&word, (char *)proc->arg + at, sizeof word);
    MP__SCANNED(&word, sizeof word); /* a struct's padding is scanned too */
    if (word % sizeof(uintptr_t) != 0 || !mp__shared_contains((void *)word))
      continue;
    /* The word may point at anything in the arena, such as a futex word that other threads
     * and processes change as it is read: an atomic load, the only race-free read of it.
     * Relaxed: the kind word of a real handle was written before the caller had the handle,
     * and any other value is only compared. */
    uint32_t kind = __atomic_load_n((const uint32_t *)word, __ATOMIC_RELAXED);
    for (size_t i = 0; i < PASSABLE_KINDS && passables[i].pass; i++)
      if (passables[i].kind == kind && passables[i].pass((void *)word, proc) == MP_ENOMEM)
        return MP_ENOMEM;
  }
  return 0;
}

int mp__process_hold_ref(mp_process_t *proc, void *obj, void (*retain)(void *obj),
                         void (*release)(void *obj)) {
  int rc = check_not_started(proc, "passing a shared object to a child");
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < proc->n_held; i++)
    if (proc->held[i].obj == obj)
      return 0;
  mp__held_t *grown = realloc(proc->held, (proc->n_held + 1) * sizeof *grown);
  if (!grown)
    return mp__error(MP_ENOMEM, "passing a shared object to a child");
  retain(obj);
  grown[proc->n_held++] = (mp__held_t){obj, release};
  proc->held = grown;
  return 0;
}

/* A failed launch's error, named after its start method. Not inlined: its buffer would
 * push the launch's frames down the stack, onto one more page to copy after the fork. */
__attribute__((noinline, cold)) static int start_failed(const mp_process_t *proc, int rc) {
  char detail[1024];
  snprintf(detail, sizeof detail, "%s", mp_last_error());
  return mp__error(rc, "mp_process_start (%s): %s", proc->ops->name, detail);
}

int mp_process_start(mp_process_t *proc) {
  int rc = check_not_started(proc, "mp_process_start");
  if (rc == 0)
    rc = pass_handles_in_arg(proc);
  if (rc < 0)
    return rc;
  proc->owner = getpid();
  rc = proc->ops->launch(proc);
  if (rc < 0)
    return start_failed(proc, rc);
  set_state(proc, proc->status_lost ? MP__ENDED : MP__STARTED);
  registry_add(proc);
  MP__TRACE(process_start, proc);
  return 0;
}

/*
 * Without a pidfd: whether the parent process has ended. kill(pid, 0) cannot tell, as it
 * succeeds on a zombie, and on whoever has the pid after the reap. A parent that forked or
 * spawned us has ended once it is not our parent: the kernel reparents us as it exits,
 * before it is reaped, to a process already running (a subreaper, init) under another pid.
 * Another parent (a fork server's or a pool zygote's child's, or the one a program's fork()
 * inherited) is looked at by pid: gone, a zombie, or a process started after us, so not
 * the one that started us (a start in the same clock tick as ours counts as alive, as does
 * a /proc that cannot be read).
 */
static bool parent_ended_without_pidfd(void) {
  if (me.parent_forked_us)
    return getppid() != me.parent.pid;
  if (kill(me.parent.pid, 0) < 0 && errno == ESRCH)
    return true;
  char state, own_state;
  uint64_t start, own_start;
  if (mp__proc_stat(me.parent.pid, &state, &start) < 0)
    return false;
  return state == 'Z' || state == 'X' ||
         (mp__proc_stat(getpid(), &own_state, &own_start) == 0 && start > own_start);
}

/*
 * Where there are no pidfds (old kernels, valgrind) nothing can be told when an unrelated
 * process ends: only there, look at the parent at growing intervals (1 ms to 50 ms). A
 * SIGINT ends the nap (nanosleep is never restarted) and the wait.
 */
static int wait_parent_without_pidfd(int64_t deadline, const mp__sigint_t *sigint) {
  for (int64_t pause_ns = 1000000;; pause_ns = pause_ns < 50000000 ? 2 * pause_ns : pause_ns) {
    if (parent_ended_without_pidfd())
      return 1;
    int64_t left = deadline - mp__now_ns();
    if (left <= 0)
      return 0;
    int64_t nap = left < pause_ns ? left : pause_ns;
    struct timespec ts = {.tv_sec = nap / 1000000000, .tv_nsec = nap % 1000000000};
    nanosleep(&ts, NULL);
    if (mp__sigint_arrived(sigint))
      return MP_EINTR;
  }
}

/* Waits for the parent process to end, until deadline: 1 ended, 0 still running, or -errno. */
static int wait_parent(int64_t deadline, const mp__sigint_t *sigint) {
  int fd = parent_pidfd();
  return fd >= 0 ? mp__poll_fd_sig(fd, POLLIN, deadline, sigint)
                 : wait_parent_without_pidfd(deadline, sigint);
}

int mp_process_join(mp_process_t *proc, double timeout) {
  int rc = 0;
  if (proc != &me.parent && (rc = check_started(proc, "mp_process_join")) == 0)
    rc = check_owner(proc, "mp_process_join");
  if (rc < 0)
    return rc;
  mp__sigint_t sigint;
  mp__sigint_begin(&sigint);
  int64_t deadline = mp__deadline(timeout);
  if (proc == &me.parent)
    rc = wait_parent(deadline, &sigint);
  else
    rc = wait_child(proc, deadline, &sigint);
  if (rc == MP_EINTR)
    return mp__error(rc, "mp_process_join: interrupted by SIGINT");
  if (rc < 0)
    return mp__error(rc, "mp_process_join: %s", mp_strerror(rc));
  if (rc == 0)
    return mp__error(MP_ETIMEDOUT, "mp_process_join: '%s' still runs after %g s",
                     proc->name, timeout);
  return 0;
}

int mp_process_is_alive(mp_process_t *proc) {
  if (!proc)
    return mp__error(MP_EINVAL, "mp_process_is_alive: proc is NULL");
  switch (proc->kind) {
  case MP__PROC_SELF:
    return 1;
  case MP__PROC_PARENT: {
    int fd = parent_pidfd();
    return fd >= 0 ? mp__poll_fd(fd, POLLIN, 0) == 0 : !parent_ended_without_pidfd();
  }
  case MP__PROC_CHILD:
    break;
  }
  int rc = check_owner(proc, "mp_process_is_alive");
  return rc < 0 ? rc : child_running(proc);
}

int mp_process_exitcode(mp_process_t *proc, int *exitcode) {
  int rc = check_started(proc, "mp_process_exitcode");
  if (rc == 0)
    rc = check_owner(proc, "mp_process_exitcode");
  if (rc == 0 && !exitcode)
    rc = mp__error(MP_EINVAL, "mp_process_exitcode: exitcode is NULL");
  if (rc < 0)
    return rc;
  if (child_running(proc))
    return mp__error(MP_EALIVE, "mp_process_exitcode: '%s' still runs", proc->name);
  if (proc->status_lost)
    return mp__error(-ECHILD, "mp_process_exitcode: '%s' ended, but a waitpid() elsewhere "
                              "in the program (or SIGCHLD ignored) took its exit status",
                     proc->name);
  *exitcode = proc->exitcode;
  return 0;
}

static int send_signal(mp_process_t *proc, int sig, const char *what) {
  int rc = check_started(proc, what);
  if (rc < 0)
    return rc;
  /* The lock keeps our own reap from freeing the pid between the look and the signal. A copy
   * of the object forked since (check_owner) may signal, as Python's may: it reaps nothing,
   * and its copy of the lock may have been taken by another thread at the fork. */
  bool own = proc->owner == getpid();
  if (own)
    pthread_mutex_lock(&proc->reap_lock);
  /* Without a pidfd (or without pidfd_send_signal, as under valgrind), the pid, unless
   * the sentinel says the child has ended: a forkserver child is reaped by the server, so
   * its pid may be anyone's by then. */
  bool running = state_of(proc) == MP__STARTED &&
                 (proc->pidfd >= 0 || mp__poll_fd(proc->status_fd, POLLIN, 0) == 0);
  int sent = 0;
  if (running && proc->pidfd >= 0)
    sent = mp__pidfd_send_signal(proc->pidfd, sig);
  if (running && proc->pid > 0 && (proc->pidfd < 0 || (sent < 0 && errno == ENOSYS)))
    sent = kill(proc->pid, sig);
  if (sent < 0 && errno != ESRCH) /* ESRCH: it has ended, and is not reaped yet */
    rc = mp__syserror("%s: signalling '%s'", what, proc->name);
  if (own)
    pthread_mutex_unlock(&proc->reap_lock);
  return rc;
}

int mp_process_terminate(mp_process_t *proc) {
  return send_signal(proc, SIGTERM, "mp_process_terminate");
}

int mp_process_kill(mp_process_t *proc) {
  return send_signal(proc, SIGKILL, "mp_process_kill");
}

int mp_process_pid(const mp_process_t *proc) {
  if (!proc)
    return mp__error(MP_EINVAL, "mp_process_pid: proc is NULL");
  if (proc->kind == MP__PROC_SELF)
    return getpid();
  if (state_of(proc) == MP__CREATED)
    return mp__error(MP_ENOTSTARTED, "mp_process_pid: '%s' has not been started",
                     proc->name);
  return proc->pid;
}

int mp_process_sentinel(const mp_process_t *proc) {
  if (proc == &me.parent) {
    int fd = parent_pidfd();
    return fd >= 0 ? fd : mp__error(-EBADF, "mp_process_sentinel: no parent pidfd");
  }
  int rc = check_started(proc, "mp_process_sentinel");
  if (rc == 0 && sentinel_of(proc) < 0)
    rc = mp__error(-ECHILD, "mp_process_sentinel: '%s' ended before it could be watched",
                   proc->name);
  return rc < 0 ? rc : sentinel_of(proc);
}

int mp_process_close(mp_process_t *proc) {
  if (proc && proc->object_kind != MP__KIND_PROCESS) { /* cleared by a close: see below */
    fprintf(stderr, "libmp: mp_process_close: process handle used after mp_process_close\n");
    abort();
  }
  if (!proc || proc->kind != MP__PROC_CHILD)
    return mp__error(MP_EINVAL, "mp_process_close: %s", proc ? "the current and the parent "
                                                               "process are never closed"
                                                             : "proc is NULL");
  int rc = check_owner(proc, "mp_process_close");
  if (rc < 0)
    return rc;
  if (child_running(proc))
    return mp__error(MP_EALIVE, "mp_process_close: '%s' still runs", proc->name);
  /* Out of the registry first: mp_active_children() may look at it until then. */
  if (state_of(proc) != MP__CREATED)
    registry_remove(proc);
  close_handles(proc);
  release_held(proc);
  pthread_mutex_destroy(&proc->reap_lock);
  proc_slot_t *slot = (proc_slot_t *)proc;
  free(proc->arg);
  if (proc->name_owned)
    free(proc->name);
  if (proc->identity != slot->identity)
    free(proc->identity);
  free(proc->passed);
  proc->object_kind = 0; /* a second close aborts, until the slot is taken again */
  slot_give_back(slot);
  return 0;
}

int mp__process_pass_fd(mp_process_t *proc, uint64_t key) {
  int rc = check_not_started(proc, "passing an fd to a child");
  if (rc == 0)
    rc = mp__fd_lookup(key);
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < proc->n_passed; i++)
    if (proc->passed[i] == key)
      return 0;
  uint64_t *grown = realloc(proc->passed, (proc->n_passed + 1) * sizeof *grown);
  if (!grown)
    return mp__error(MP_ENOMEM, "passing an fd to a child");
  grown[proc->n_passed++] = key;
  proc->passed = grown;
  return 0;
}

mp_process_t *mp_current_process(void) {
  /* Atomic: any thread may ask, and each writes its answer (the same one). */
  __atomic_store_n(&me.current.pid, getpid(), __ATOMIC_RELAXED);
  return &me.current;
}

mp_process_t *mp_parent_process(void) {
  return me.has_parent ? &me.parent : NULL;
}

int mp_active_children(mp_process_t **children, size_t capacity) {
  if (!children && capacity > 0)
    return mp__error(MP_EINVAL, "mp_active_children: children is NULL");
  /* Under the lock, so that no other thread frees a member meanwhile; the checks do not
   * block (and take only each member's reap lock, never the other way round). */
  size_t running = 0;
  pthread_mutex_lock(&me.registry_lock);
  for (mp_process_t *p = me.registry; p; p = p->next)
    if (child_running(p)) {
      if (running < capacity)
        children[running] = p;
      running++;
    }
  pthread_mutex_unlock(&me.registry_lock);
  return running > INT_MAX ? INT_MAX : (int)running;
}

/* ------------------------------- cpu count ------------------------------- */

/* The CPUs a quota of quota/period allows, rounded up; 0 for no limit. */
static int quota_cpus(long long quota, long long period) {
  if (quota <= 0 || period <= 0)
    return 0;
  return (int)((quota + period - 1) / period);
}

static bool read_line(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "re");
  if (!f)
    return false;
  bool ok = fgets(buf, (int)cap, f) != NULL;
  fclose(f);
  return ok;
}

/*
 * The tightest CPU quota of this process's cgroup and its ancestors (a limit anywhere up
 * the tree applies), for the v2 hierarchy ("0::/path", file cpu.max holding "max 100000"
 * or "50000 100000") or v1's cpu controller (cpu.cfs_quota_us, cpu.cfs_period_us).
 */
static int cgroup_cpu_limit(void) {
  FILE *f = fopen("/proc/self/cgroup", "re");
  if (!f)
    return 0;
  char line[4096];
  int limit = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *controllers = strchr(line, ':');
    char *path = controllers ? strchr(controllers + 1, ':') : NULL;
    if (!path)
      continue;
    *path++ = '\0';
    controllers++;
    bool v2 = *controllers == '\0';
    bool v1_cpu = false;
    char *save;
    for (char *tok = strtok_r(controllers, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
      v1_cpu |= strcmp(tok, "cpu") == 0;
    if (!v2 && !v1_cpu)
      continue;
    const char *root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/cpu";
    if (v2 && access("/sys/fs/cgroup/cgroup.controllers", F_OK) != 0)
      root = "/sys/fs/cgroup/unified"; /* hybrid layout: v2 mounted beside v1 */
    for (;;) {
      char file[8192], value[128];
      long long quota = 0, period = 0;
      if (v2) {
        snprintf(file, sizeof file, "%s%s/cpu.max", root, path);
        if (read_line(file, value, sizeof value) && isdigit((unsigned char)value[0]))
          sscanf(value, "%lld %lld", &quota, &period);
      } else {
        snprintf(file, sizeof file, "%s%s/cpu.cfs_quota_us", root, path);
        if (read_line(file, value, sizeof value))
          quota = atoll(value);
        snprintf(file, sizeof file, "%s%s/cpu.cfs_period_us", root, path);
        if (read_line(file, value, sizeof value))
          period = atoll(value);
      }
      int cpus = quota_cpus(quota, period);
      if (cpus > 0 && (limit == 0 || cpus < limit))
        limit = cpus;
      char *slash = strrchr(path, '/');
      if (!slash || slash[1] == '\0')
        break;
      slash[slash == path ? 1 : 0] = '\0';
    }
  }
  fclose(f);
  return limit;
}

int mp_cpu_count(void) {
  int cpus = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    cpus = CPU_COUNT(&set);
  if (cpus <= 0) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpus = online > 0 ? (int)online : 1;
  }
  int limit = cgroup_cpu_limit();
  return limit > 0 && limit < cpus ? limit : cpus;
}
