/*
 * timeline: a trace written by MP_TRACE (docs/trace.md) as text, for a terminal: one lane
 * per thread of each process, and one per lock a process held, time running left to right;
 * then, per lock, who held it and who waited for it, how often and how long.
 *
 * Usage: timeline [--width N] FILE
 *        timeline --repair FILE    writes FILE from the events its placeholder points
 *                                  to (a program killed before it wrote its trace), then
 *                                  prints it. Only a directory libmp made for FILE, the
 *                                  user's and private, is read and cleaned
 *                                  (mp_trace_merge(), docs/trace.md)
 *
 * It reads the files libmp writes (one event a line), not any trace-event JSON.
 */
#include <mp.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LABEL 30
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define MAX_OBJECTS 52 /* lettered A-Z, then a-z is taken by waits: beyond, '#' */

typedef struct {
  char name[128], cat[32], ph[4], object[128], error[32];
  long pid, tid;
  double ts, dur;
  bool has_ts, timed_out;
} event_t;

typedef struct {
  long pid, tid;
  char label[128];
  long sort;
  char *row;
} track_t;

typedef struct {
  char name[128];
  double held, waited, longest_wait;
  long holds, waits, failed;
} object_t;

static event_t *events;
static size_t n_events;
static track_t *tracks;
static size_t n_tracks;
static object_t objects[MAX_OBJECTS];
static size_t n_objects;

static void *grow_or_die(void *p, size_t n, size_t size) {
  p = realloc(p, (n + 1) * size);
  if (!p) {
    fprintf(stderr, "timeline: out of memory\n");
    exit(1);
  }
  return p;
}

/* The JSON string that starts after key in line, unescaped into out; false if absent. */
static bool string_field(const char *line, const char *key, char *out, size_t cap) {
  const char *p = strstr(line, key);
  if (!p)
    return false;
  p += strlen(key);
  size_t o = 0;
  for (; *p && *p != '"'; p++) {
    char c = *p;
    if (c == '\\' && p[1]) {
      p++;
      c = *p == 'u' ? '?' : *p; /* \u00XX: control bytes, shown as '?' */
      if (*p == 'u')
        p += strlen(p) >= 5 ? 4 : strlen(p) - 1;
    }
    if (o + 1 < cap)
      out[o++] = c;
  }
  out[o] = 0;
  return true;
}

static bool number_field(const char *line, const char *key, double *out) {
  const char *p = strstr(line, key);
  return p && sscanf(p + strlen(key), "%lf", out) == 1;
}

/* A whole number of the file: 0 if it is none a long holds (converting one would be
 * undefined). */
static long whole(double v) {
  return v > -1e18 && v < 1e18 ? (long)v : 0;
}

static track_t *track(long pid, long tid) {
  for (size_t i = 0; i < n_tracks; i++)
    if (tracks[i].pid == pid && tracks[i].tid == tid)
      return &tracks[i];
  tracks = grow_or_die(tracks, n_tracks, sizeof *tracks);
  track_t *t = &tracks[n_tracks++];
  *t = (track_t){pid, tid, "", 0, NULL};
  snprintf(t->label, sizeof t->label, "thread %ld", tid);
  return t;
}

static long process_sort(long pid) {
  for (size_t i = 0; i < n_tracks; i++)
    if (tracks[i].pid == pid && tracks[i].tid == -1)
      return tracks[i].sort;
  return 0;
}

/* The object's index, lettered by first appearance. */
static size_t object(const char *name) {
  for (size_t i = 0; i < n_objects; i++)
    if (strcmp(objects[i].name, name) == 0)
      return i;
  if (n_objects == MAX_OBJECTS)
    return MAX_OBJECTS;
  snprintf(objects[n_objects].name, sizeof objects[n_objects].name, "%s", name);
  return n_objects++;
}

static char letter(size_t i, bool upper) {
  if (i >= 26)
    return '#';
  return (char)((upper ? 'A' : 'a') + i);
}

/* Reads the file's events; exits when it is no libmp trace, or an incomplete one. */
static void read_trace(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    perror(path);
    exit(1);
  }
  char *line = NULL;
  size_t cap = 0;
  bool incomplete = false, libmp = false;
  while (getline(&line, &cap, f) > 0) {
    incomplete |= strstr(line, "\"libmp_incomplete\"") != NULL;
    libmp |= strstr(line, "\"libmp_trace\"") != NULL;
    if (strncmp(line, "{\"name\":\"", 9) != 0 && strncmp(line, ",{\"name\":\"", 10) != 0)
      continue;
    event_t e = {0};
    double v;
    string_field(line, "{\"name\":\"", e.name, sizeof e.name);
    string_field(line, "\"cat\":\"", e.cat, sizeof e.cat);
    string_field(line, "\"ph\":\"", e.ph, sizeof e.ph);
    string_field(line, "\"object\":\"", e.object, sizeof e.object);
    string_field(line, "\"error\":\"", e.error, sizeof e.error);
    e.pid = number_field(line, "\"pid\":", &v) ? whole(v) : 0;
    e.tid = number_field(line, "\"tid\":", &v) ? whole(v) : 0;
    e.has_ts = number_field(line, "\"ts\":", &e.ts);
    if (!number_field(line, "\"dur\":", &e.dur))
      e.dur = 0;
    /* libmp writes neither; a file edited or damaged may, and would put a mark outside its
     * lane. */
    if ((e.has_ts && !isfinite(e.ts)) || !isfinite(e.dur) || e.dur < 0)
      continue;
    e.timed_out = strstr(line, "\"timed_out\":true") || e.error[0];
    if (e.ph[0] == 'M') {
      char value[128] = "";
      string_field(line, "\"args\":{\"name\":\"", value, sizeof value);
      if (strcmp(e.name, "process_name") == 0)
        snprintf(track(e.pid, -1)->label, sizeof tracks[0].label, "%s", value);
      else if (strcmp(e.name, "thread_name") == 0)
        snprintf(track(e.pid, e.tid)->label, sizeof tracks[0].label, "%s", value);
      else if (number_field(line, "\"sort_index\":", &v))
        track(e.pid, -1)->sort = whole(v);
      continue;
    }
    events = grow_or_die(events, n_events, sizeof *events);
    events[n_events++] = e;
    track(e.pid, e.tid);
  }
  free(line);
  fclose(f);
  if (incomplete) {
    fprintf(stderr,
            "timeline: %s is the placeholder of a trace not written yet: the program runs, "
            "or was killed.\nRun `timeline --repair %s` to write it from its events.\n",
            path, path);
    exit(2);
  }
  if (!libmp) {
    fprintf(stderr, "timeline: %s is not a trace written by libmp\n", path);
    exit(1);
  }
}

static int by_lane(const void *a, const void *b) {
  const track_t *x = a, *y = b;
  long sx = process_sort(x->pid), sy = process_sort(y->pid);
  if (sx != sy)
    return sx < sy ? -1 : 1;
  if (x->pid != y->pid)
    return x->pid < y->pid ? -1 : 1;
  return (x->tid > y->tid) - (x->tid < y->tid); /* the process's line, threads, then holds */
}

/* The mark an event leaves on its lane. */
static char mark(const event_t *e) {
  bool lock = e->object[0] && strncmp(e->cat, "lock.", 5) == 0;
  size_t o = lock ? object(e->object) : MAX_OBJECTS;
  if (strcmp(e->cat, "lock.hold") == 0)
    return letter(o, true);
  if (strcmp(e->cat, "lock.wait") == 0)
    return letter(o, false);
  if (strcmp(e->cat, "wait") == 0)
    return '~';
  if (strcmp(e->cat, "queue") == 0)
    return e->name[0] == 'p' ? '>' : '<';
  if (strcmp(e->cat, "connection") == 0)
    return e->name[0] == 's' ? 's' : 'r';
  if (strcmp(e->cat, "pool.chunk") == 0)
    return '=';
  if (strcmp(e->name, "task failed") == 0)
    return '?';
  if (strncmp(e->name, "worker", 6) == 0)
    return strstr(e->name, "lost") ? 'L' : '.';
  if (strcmp(e->cat, "shared_memory") == 0)
    return '*';
  if (strcmp(e->cat, "mark") == 0)
    return '^';
  if (strncmp(e->name, "start", 5) == 0)
    return '[';
  if (strncmp(e->name, "killed", 6) == 0)
    return 'K';
  if (strcmp(e->name, "exit") == 0 || strncmp(e->name, "ended", 5) == 0)
    return ']';
  return '.';
}

/* The column of time t, within the lane however far t lies (a span of 1e308 us makes a
 * column infinite, and t - t0 over it not a number). */
static int column(double t, double t0, double per_col, int width) {
  double x = (t - t0) / per_col;
  return x >= 0 ? (int)MIN(x, width - 1) : 0;
}

static void account(const event_t *e) {
  if (!e->object[0] || strncmp(e->cat, "lock.", 5) != 0)
    return;
  size_t o = object(e->object);
  if (o == MAX_OBJECTS)
    return;
  object_t *ob = &objects[o];
  if (strcmp(e->cat, "lock.hold") == 0) {
    ob->holds++;
    ob->held += e->dur;
    return;
  }
  ob->waits++;
  ob->failed += e->timed_out;
  ob->waited += e->dur;
  ob->longest_wait = MAX(ob->longest_wait, e->dur);
}

int main(int argc, char **argv) {
  int width = 72;
  bool repair = false;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--repair") == 0)
      repair = true;
    else if (strcmp(argv[i], "--width") == 0 && i + 1 < argc)
      width = atoi(argv[++i]);
    else if (argv[i][0] != '-' && !path)
      path = argv[i];
    else
      path = NULL, i = argc;
  }
  if (!path || width < 10 || width > 1000) {
    fprintf(stderr, "usage: timeline [--width N] [--repair] FILE\n");
    return 1;
  }
  if (repair) {
    int rc = mp_trace_merge(path);
    if (rc < 0) {
      fprintf(stderr, "timeline: %s\n", mp_last_error());
      return 1;
    }
    printf("%s: written from the events the killed program left\n\n", path);
  }
  read_trace(path);
  double t0 = HUGE_VAL, t1 = -HUGE_VAL;
  for (size_t i = 0; i < n_events; i++) {
    if (!events[i].has_ts)
      continue;
    t0 = MIN(t0, events[i].ts);
    t1 = MAX(t1, events[i].ts + events[i].dur);
  }
  if (!(t1 > t0))
    t1 = t0 + 1;
  double per_col = (t1 - t0) / (width - 1);
  qsort(tracks, n_tracks, sizeof *tracks, by_lane);
  for (size_t i = 0; i < n_tracks; i++) {
    tracks[i].row = malloc((size_t)width + 1);
    if (!tracks[i].row)
      return 1;
    memset(tracks[i].row, ' ', (size_t)width);
    tracks[i].row[width] = 0;
  }
  /* Spans first, then instants over them: a start or a death is never hidden. */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < n_events; i++) {
      const event_t *e = &events[i];
      /* A wait that gave up is marked again, with '!', among the instants. */
      bool instant = e->ph[0] != 'X' || e->timed_out;
      if (!e->has_ts || (pass == 0 ? e->ph[0] != 'X' : !instant))
        continue;
      if (pass == 0)
        account(e);
      track_t *t = track(e->pid, e->tid);
      int a = column(e->ts, t0, per_col, width), b = column(e->ts + e->dur, t0, per_col, width);
      char c = mark(e);
      for (int x = pass == 0 ? a : b; x <= b && x < width; x++)
        t->row[x] = pass == 0 ? c : e->ph[0] == 'X' ? '!' : c;
    }
  }
  printf("%s: %.3f ms, one column is %.3g ms\n\n", path, (t1 - t0) / 1e3, per_col / 1e3);
  for (size_t i = 0; i < n_tracks; i++) {
    const track_t *t = &tracks[i];
    if (t->tid == -1) {
      printf("%s, pid %ld\n", t->label, t->pid);
      continue;
    }
    printf("  %-*.*s|%s|\n", LABEL, LABEL, t->label, t->row);
  }
  printf("\nA, B, ...: holding the object below; a, b, ...: waiting for it (! gave up)\n"
         "~ Condition/Event/Barrier wait   > put  < get  s send  r recv  = pool chunk\n"
         "[ start  ] exit  K killed by a signal  L worker lost  ? task failed  "
         "* shared memory  ^ mark\n\n");
  for (size_t o = 0; o < n_objects; o++) {
    const object_t *ob = &objects[o];
    printf("%c %-20s held %ld times, %.3f ms in all; waited for %ld times, %.3f ms in all, "
           "longest %.3f ms%s",
           letter(o, true), ob->name, ob->holds, ob->held / 1e3, ob->waits, ob->waited / 1e3,
           ob->longest_wait / 1e3, ob->failed ? "; " : "\n");
    if (ob->failed)
      printf("%ld waits gave up\n", ob->failed);
  }
  for (size_t i = 0; i < n_tracks; i++)
    free(tracks[i].row);
  free(tracks);
  free(events);
  return 0;
}
