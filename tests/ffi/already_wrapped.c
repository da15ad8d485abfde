/* Wrapping memory that another producer of the process wraps already: the second wrap is
 * refused with TCASM_ERR_CANNOT_TRACK, and tcasm_last_error() names the real cause (another
 * producer tracks the buffer), not that the tracker cannot track such memory, nor a Rust
 * call a C program does not have. Run by tests/capi.rs:
 *
 *   already_wrapped NAME TRACKER    prints "ok" when every check passed, else says which
 *                                   failed on stderr and exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tcasm.h"

static int failures;

static void expect_status(const char *what, tcasm_status got, tcasm_status want) {
    if (got != want) {
        fprintf(stderr, "%s returned %d (%s), expected %d: %s\n", what, (int)got, tcasm_strerror(got), (int)want,
                tcasm_last_error());
        failures++;
    }
}

static void expect_message(const char *part, int present) {
    if ((strstr(tcasm_last_error(), part) != NULL) != present) {
        fprintf(stderr, "last error \"%s\" %s \"%s\"\n", tcasm_last_error(), present ? "does not mention" : "mentions",
                part);
        failures++;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: already_wrapped NAME TRACKER\n");
        return 2;
    }
    const char *name = argv[1], *tracker = argv[2];
    char first_name[200], second_name[200];
    snprintf(first_name, sizeof first_name, "%s-first", name);
    snprintf(second_name, sizeof second_name, "%s-second", name);

    /* Whole pages, so that every tracker takes the buffer. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE), count = 4 * page / sizeof(double);
    double *field = NULL;
    if (posix_memalign((void **)&field, page, count * sizeof *field))
        return fprintf(stderr, "posix_memalign failed\n"), 1;
    memset(field, 0, count * sizeof *field);
    size_t shape[1] = {count};

    tcasm_producer *first = NULL, *second = NULL;
    expect_status("creating the first producer", tcasm_producer_create_with(first_name, tracker, 0, &first), TCASM_OK);
    expect_status("creating the second producer", tcasm_producer_create_with(second_name, tracker, 0, &second), TCASM_OK);
    if (!first || !second)
        return fprintf(stderr, "no producers: %s\n", tcasm_last_error()), 1;
    expect_status("the first wrap", tcasm_wrap(first, "t", TCASM_F64, field, shape, 1), TCASM_OK);
    expect_status("wrapping the same buffer in the second producer", tcasm_wrap(second, "t", TCASM_F64, field, shape, 1),
                  TCASM_ERR_CANNOT_TRACK);
    /* The cause, and what to do about it. */
    expect_message("already tracked by another producer", 1);
    expect_message("Destroy the other producer first", 1);
    /* Not the message of memory no tracker can watch, nor a Rust call. */
    expect_message("cannot track the buffer", 0);
    expect_message("Producer::region", 0);

    /* Once the first producer is gone, the buffer is free for the second. */
    tcasm_producer_destroy(first);
    expect_status("wrapping it once the first producer is destroyed", tcasm_wrap(second, "t", TCASM_F64, field, shape, 1),
                  TCASM_OK);
    tcasm_producer_destroy(second);
    free(field);
    if (failures)
        return 1;
    printf("ok\n");
    return 0;
}
