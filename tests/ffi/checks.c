/* The C ABI's contract, from C: every misuse gets its status and a message, static and
 * heap arrays can be wrapped, what is published is what the arrays held, and a producer
 * that cannot have its endpoint, its tracker, its threads or its memory says so. Run by
 * tests/capi.rs, which checks the published regions from Rust:
 *
 *   checks NAME TRACKER    prints "ready VERSION" once published; when a line arrives on
 *                          stdin destroys the producer and prints "destroyed"; at the next
 *                          line checks the failing statuses, then prints "done".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tcasm.h"

static int failures;

#define EXPECT(call, want)                                                                       \
    do {                                                                                         \
        tcasm_status got_ = (call);                                                              \
        if (got_ != (want)) {                                                                    \
            fprintf(stderr, "line %d: %s returned %d (%s), expected %d: %s\n", __LINE__, #call, \
                    (int)got_, tcasm_strerror(got_), (int)(want), tcasm_last_error());           \
            failures++;                                                                          \
        }                                                                                        \
    } while (0)

#define EXPECT_MESSAGE(part)                                                                     \
    do {                                                                                         \
        if (!strstr(tcasm_last_error(), (part))) {                                               \
            fprintf(stderr, "line %d: last error \"%s\" does not mention \"%s\"\n", __LINE__,    \
                    tcasm_last_error(), (part));                                                 \
            failures++;                                                                          \
        }                                                                                        \
    } while (0)

/* Static arrays: zero-initialised (.bss) and initialised (.data). */
static uint32_t counters[4096];
static int16_t table[100] = {1, 2, 3};

/* This process's address space in bytes (VmSize). */
static unsigned long long address_space(void) {
    char line[256];
    unsigned long long kb = 0;
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof line, status))
        if (sscanf(line, "VmSize: %llu kB", &kb) == 1)
            break;
    if (status)
        fclose(status);
    return kb << 10;
}

/* Address space for one more thread (a 2 MiB stack) only: the deferred tracker's fault
 * handler starts, its copier thread cannot (TCASM_ERR_IO). Run first, before any thread of tcasm ran (whose
 * cached stack a new thread would reuse), and only where that tracker works (the test says
 * so), as otherwise the tracker itself is refused. */
static void no_room_for_a_thread(const char *name) {
    if (!getenv("TCASM_CHECKS_DEFERRED"))
        return;
    tcasm_producer *q = NULL;
    struct rlimit space, tight;
    getrlimit(RLIMIT_AS, &space);
    tight = space;
    tight.rlim_cur = address_space() + (3u << 20);
    setrlimit(RLIMIT_AS, &tight);
    EXPECT(tcasm_producer_create_with(name, "deferred", 0, &q), TCASM_ERR_IO);
    EXPECT_MESSAGE("starting the copier thread");
    setrlimit(RLIMIT_AS, &space);
    if (q)
        fprintf(stderr, "a failed create left a producer\n"), failures++;
}

/* The statuses of what the program cannot change by calling differently: an endpoint
 * directory anyone may write (TCASM_ERR_ENDPOINT), a tracker that cannot open its
 * userfaultfd with no descriptors left (TCASM_ERR_TRACKER), a store that cannot grow past
 * the file size limit (TCASM_ERR_PUBLISH). (TCASM_ERR_IO: no_room_for_a_thread.) Each with the message that says what to do. */
static void failing_statuses(const char *name) {
    char named[256];
    snprintf(named, sizeof named, "%s-failing", name);
    tcasm_producer *q = NULL;

    const char *dir = getenv("TCASM_DIR");
    char open_dir[512];
    snprintf(open_dir, sizeof open_dir, "%s/anyone-writes", dir ? dir : "/tmp");
    mkdir(open_dir, 0777);
    chmod(open_dir, 0777);
    setenv("TCASM_DIR", open_dir, 1);
    EXPECT(tcasm_producer_create_with(named, "copy", 0, &q), TCASM_ERR_ENDPOINT);
    EXPECT_MESSAGE("anyone may write it");
    if (dir)
        setenv("TCASM_DIR", dir, 1);
    else
        unsetenv("TCASM_DIR");
    rmdir(open_dir);

    struct rlimit files, lowered;
    getrlimit(RLIMIT_NOFILE, &files);
    lowered = files;
    lowered.rlim_cur = 0;
    setrlimit(RLIMIT_NOFILE, &lowered);
    EXPECT(tcasm_producer_create_with(named, "async", 0, &q), TCASM_ERR_TRACKER);
    setrlimit(RLIMIT_NOFILE, &files);
    if (q)
        fprintf(stderr, "a failed create left a producer\n"), failures++;

    /* A pool of one page at most: the first publish cannot have its store. */
    EXPECT(tcasm_producer_create_with(named, "copy", 0, &q), TCASM_OK);
    if (!q)
        return;
    static double field[4096];
    size_t shape[1] = {4096};
    EXPECT(tcasm_wrap(q, "field", TCASM_F64, field, shape, 1), TCASM_OK);
    struct rlimit size, small;
    getrlimit(RLIMIT_FSIZE, &size);
    small = size;
    small.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &small);
    uint64_t version = 0;
    EXPECT(tcasm_publish(q, &version), TCASM_ERR_PUBLISH);
    EXPECT_MESSAGE("EFBIG");
    EXPECT_MESSAGE("raise the file size limit");
    setrlimit(RLIMIT_FSIZE, &size);
    EXPECT(tcasm_publish(q, &version), TCASM_OK);
    if (version != 1)
        fprintf(stderr, "after a failed publish, the first version is %llu\n", (unsigned long long)version), failures++;
    tcasm_producer_destroy(q);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: checks NAME TRACKER\n");
        return 2;
    }
    const char *name = argv[1], *tracker = argv[2];

    /* Every status has a description; unknown ones too. */
    for (int s = 0; s <= 14; s++)
        if (!tcasm_strerror(s) || !*tcasm_strerror(s) || strstr(tcasm_strerror(s), "unknown"))
            fprintf(stderr, "status %d has no description\n", s), failures++;
    if (strcmp(tcasm_strerror(99), "unknown tcasm status") || strcmp(tcasm_strerror(-1), "unknown tcasm status"))
        fprintf(stderr, "unknown statuses are not described as such\n"), failures++;
    if (!tcasm_last_error() || *tcasm_last_error())
        fprintf(stderr, "the last error is not empty before any failure\n"), failures++;
    no_room_for_a_thread(name);

    /* Creating. */
    tcasm_producer *p = (tcasm_producer *)&failures; /* must be reset to NULL on failure */
    EXPECT(tcasm_producer_create(name, NULL), TCASM_ERR_NULL);
    EXPECT_MESSAGE("out is NULL");
    EXPECT(tcasm_producer_create(NULL, &p), TCASM_ERR_NULL);
    if (p != NULL)
        fprintf(stderr, "*out is not NULL after a failed create\n"), failures++;
    EXPECT(tcasm_producer_create("no spaces allowed", &p), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("not valid");
    EXPECT(tcasm_producer_create("\xff\xfe", &p), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("UTF-8");
    EXPECT(tcasm_producer_create_with(name, "fastest", 0, &p), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("unknown tracker");
    EXPECT(tcasm_producer_create_with(name, tracker, 4, &p), TCASM_OK);
    tcasm_producer *again = NULL;
    EXPECT(tcasm_producer_create(name, &again), TCASM_ERR_NAME_IN_USE);
    EXPECT_MESSAGE("already running");
    if (!p)
        return fprintf(stderr, "no producer: %s\n", tcasm_last_error()), 1;
    const char *used = tcasm_producer_tracker(p);
    if (!used || (strcmp(tracker, "auto") && strcmp(used, tracker)))
        fprintf(stderr, "tracker is %s, asked for %s\n", used ? used : "NULL", tracker), failures++;
    if (tcasm_producer_tracker(NULL) != NULL)
        fprintf(stderr, "tcasm_producer_tracker(NULL) is not NULL\n"), failures++;
    /* Every publish below is shared by two copy threads. */
    EXPECT(tcasm_set_copy_threads(NULL, 2), TCASM_ERR_NULL);
    EXPECT(tcasm_set_copy_threads(p, 2), TCASM_OK);

    /* Wrapping: every misuse is refused. */
    size_t rows = 30, cols = 50;
    double *heap = malloc(rows * cols * sizeof *heap);
    char *bytes = malloc(64);
    size_t shape2[2] = {rows, cols}, nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, zero[1] = {0}, one[1] = {4};
    EXPECT(tcasm_publish(p, NULL), TCASM_ERR_NO_REGIONS);
    EXPECT(tcasm_wrap(NULL, "heap", TCASM_F64, heap, shape2, 2), TCASM_ERR_NULL);
    EXPECT(tcasm_wrap(p, NULL, TCASM_F64, heap, shape2, 2), TCASM_ERR_NULL);
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, NULL, shape2, 2), TCASM_ERR_NULL);
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, heap, NULL, 2), TCASM_ERR_NULL);
    EXPECT(tcasm_wrap(p, "heap", 0, heap, shape2, 2), TCASM_ERR_INVALID);
    EXPECT(tcasm_wrap(p, "heap", 11, heap, shape2, 2), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("unknown element type 11");
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, heap, shape2, 0), TCASM_ERR_INVALID);
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, heap, nine, 9), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("1 to 8 dimensions");
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, heap, zero, 1), TCASM_ERR_INVALID);
    EXPECT(tcasm_wrap(p, "bad name", TCASM_F64, heap, shape2, 2), TCASM_ERR_INVALID);
    EXPECT(tcasm_wrap(p, "odd", TCASM_F64, bytes + 1, one, 1), TCASM_ERR_MISALIGNED);
    EXPECT_MESSAGE("not aligned");

    /* Wrapping what a C program has: heap and static arrays. */
    for (size_t i = 0; i < rows * cols; i++)
        heap[i] = (double)i * 0.25;
    for (size_t i = 0; i < 4096; i++)
        counters[i] = (uint32_t)(i * 2654435761u);
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, heap, shape2, 2), TCASM_OK);
    EXPECT(tcasm_wrap(p, "heap", TCASM_F64, heap, shape2, 2), TCASM_ERR_DUPLICATE);
    EXPECT(tcasm_wrap(p, "heap-again", TCASM_F64, heap + 10, one, 1), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("overlaps");
    size_t counters_shape[2] = {64, 64}, table_shape[1] = {100};
    EXPECT(tcasm_wrap(p, "static/counters", TCASM_U32, counters, counters_shape, 2), TCASM_OK);
    /* Initialised static data sits in a private file mapping, which write-protect tracking
     * may not support (TCASM_ERR_CANNOT_TRACK); the copy tracker never refuses it. */
    tcasm_status data_status = tcasm_wrap(p, "static/table", TCASM_I16, table, table_shape, 1);
    int copying = !strcmp(used, "copy");
    if (data_status != TCASM_OK && (copying || data_status != TCASM_ERR_CANNOT_TRACK))
        fprintf(stderr, "wrapping initialised static data (tracker %s): %s\n", used, tcasm_last_error()), failures++;

    /* Restarting: no checkpoint is its own status, and leaves the version alone. */
    uint64_t restored = 77;
    EXPECT(tcasm_restore(NULL, "/nonexistent", &restored), TCASM_ERR_NULL);
    EXPECT(tcasm_restore(p, NULL, &restored), TCASM_ERR_NULL);
    EXPECT(tcasm_restore(p, "", &restored), TCASM_ERR_INVALID);
    EXPECT_MESSAGE("names no directory");
    EXPECT(tcasm_restore(p, "/nonexistent/tcasm-local:/nonexistent/tcasm-pfs", &restored), TCASM_ERR_NO_CHECKPOINT);
    EXPECT_MESSAGE("no complete checkpoint in /nonexistent/tcasm-local or /nonexistent/tcasm-pfs");
    if (restored != 77)
        fprintf(stderr, "tcasm_restore without a checkpoint set the version\n"), failures++;

    /* Publishing. */
    uint64_t version = 0;
    EXPECT(tcasm_publish(NULL, &version), TCASM_ERR_NULL);
    EXPECT(tcasm_publish(p, &version), TCASM_OK);
    if (version != 1)
        fprintf(stderr, "the first version is %llu\n", (unsigned long long)version), failures++;
    heap[0] = -1.0;
    counters[4095] = 7;
    table[99] = -99;
    EXPECT(tcasm_publish(p, &version), TCASM_OK);
    EXPECT(tcasm_flush(p), TCASM_OK);
    size_t late_shape[1] = {8};
    EXPECT(tcasm_wrap(p, "late", TCASM_U8, bytes, late_shape, 1), TCASM_ERR_AFTER_PUBLISH);
    EXPECT(tcasm_restore(p, "/nonexistent", NULL), TCASM_ERR_AFTER_PUBLISH);

    tcasm_producer_stats stats;
    memset(&stats, 0xff, sizeof stats);
    EXPECT(tcasm_stats(p, NULL), TCASM_ERR_NULL);
    EXPECT(tcasm_stats(p, &stats), TCASM_OK);
    if (stats.versions != version || stats.pages == 0 || stats.store_bytes == 0 || stats.total_publish_ns == 0)
        fprintf(stderr, "stats: versions %llu pages %llu store %llu\n", (unsigned long long)stats.versions,
                (unsigned long long)stats.pages, (unsigned long long)stats.store_bytes), failures++;

    /* The test process checks the published regions, then lets this producer go. */
    printf("ready %llu %s %s\n", (unsigned long long)version, used, data_status == TCASM_OK ? "table" : "no-table");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        fprintf(stderr, "stdin closed\n"), failures++;
    tcasm_producer_destroy(p);
    tcasm_producer_destroy(NULL);
    free(heap);
    free(bytes);
    /* Still running: the test process sees the producer gone now. */
    printf("destroyed\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        fprintf(stderr, "stdin closed\n"), failures++;
    failing_statuses(name);
    printf("done %d\n", failures);
    return failures ? 1 : 0;
}
