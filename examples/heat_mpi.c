/* The 2-D heat diffusion of heat.c, split over the ranks of an MPI job: each rank steps a
 * band of rows (a 1-D decomposition) and trades its edge rows with its neighbours (halo
 * exchange) before every step. The five lines marked tcasm make each rank a producer of its
 * own, "heat.<rank>", sharing its tile, its step counter and the tile's place in the global
 * grid (the small regions global_shape and offset, from which `tcasm restore --global`
 * assembles the global field); the three marked restart let every rank restart from the
 * newest global checkpoint, and check that every rank restored the same step.
 *
 * Build and run from the repository root (one checkpointer per node, see README "Many nodes"):
 *   cargo build --release -p tcasm-capi
 *   mpicc -O2 -Iinclude examples/heat_mpi.c -Ltarget/release -ltcasm -Wl,-rpath,"$PWD/target/release" -o heat_mpi
 *   cargo run --release -- checkpoint --all 'heat.*' --dir /tmp/ckpt --flush-to /pfs/ckpt &
 *   mpirun -n 4 ./heat_mpi 1000 10 'heat.%r' /tmp/ckpt:/pfs/ckpt
 * Arguments: STEPS, MILLISECONDS per step, NAME (with %r), CHECKPOINT DIRS (level 1 first;
 * "" for none), and a FILE where rank 0 writes the final global field (raw f64, row-major).
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tcasm.h" /* tcasm */

enum { NY = 96, NX = 128 };

static void die(const char *why) {
    fprintf(stderr, "heat_mpi: %s\n", why);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* A cold plate with a square heater held at 100 degrees (global row i, column j). */
static int heater(int i, int j) {
    return i >= NY / 4 && i < NY / 2 && j >= NX / 4 && j < NX / 2;
}

/* One explicit time step of rows row0.. of the global grid: `w` holds them with a halo row
 * above and below, the result goes to `t`; the plate's edges are held at 0. */
static void step(const double *w, double *t, int rows, int row0) {
    for (int i = 0; i < rows; i++) {
        int gi = row0 + i;
        for (int j = 0; j < NX; j++) {
            const double *c = &w[(i + 1) * NX + j];
            if (heater(gi, j))
                t[i * NX + j] = 100.0;
            else if (gi == 0 || j == 0 || gi == NY - 1 || j == NX - 1)
                t[i * NX + j] = 0.0;
            else
                t[i * NX + j] = *c + 0.2 * (c[-NX] + c[NX] + c[-1] + c[1] - 4.0 * *c);
        }
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long steps = argc > 1 ? atol(argv[1]) : 1000;
    long delay_ms = argc > 2 ? atol(argv[2]) : 10;
    const char *name = argc > 3 ? argv[3] : "heat.%r";
    struct timespec delay = { delay_ms / 1000, (delay_ms % 1000) * 1000000L };
    if (size > NY)
        die("more ranks than rows");

    /* This rank's band: `rows` rows from global row `row0`. */
    int rows = NY / size + (rank < NY % size), row0 = rank * (NY / size) + (rank < NY % size ? rank : NY % size);
    double *t = calloc((size_t)rows * NX, sizeof *t), *w = calloc((size_t)(rows + 2) * NX, sizeof *w);
    if (!t || !w)
        die("out of memory");
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < NX; j++)
            t[i * NX + j] = heater(row0 + i, j) ? 100.0 : 0.0;
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL, down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;

    int64_t *done = calloc(1, sizeof *done); uint64_t place[4] = {NY, NX, (uint64_t)row0, 0}; tcasm_producer *tp; /* tcasm */
    if (!done || tcasm_producer_create(name, &tp) || tcasm_wrap(tp, "temperature", TCASM_F64, t, (size_t[]){rows, NX}, 2) || tcasm_wrap(tp, "step", TCASM_I64, done, (size_t[]){1}, 1) || tcasm_wrap(tp, "global_shape", TCASM_U64, place, (size_t[]){2}, 1) || tcasm_wrap(tp, "offset", TCASM_U64, place + 2, (size_t[]){2}, 1)) die(tcasm_last_error()); /* tcasm */
    if (argc > 4 && *argv[4]) switch (tcasm_restore(tp, argv[4], NULL)) { case TCASM_OK: case TCASM_ERR_NO_CHECKPOINT: break; default: die(tcasm_last_error()); } /* tcasm: restart */
    if (argc > 4 && *argv[4]) { int64_t lo, hi; MPI_Allreduce(done, &lo, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD); MPI_Allreduce(done, &hi, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD); if (lo != hi) die("ranks restored different steps: restart once the checkpointers of the last run have stopped"); if (rank == 0 && lo) printf("heat_mpi: every rank restored step %lld\n", (long long)lo); } /* tcasm: restart */
    for (long s = 1; s <= steps; s++) {
        if (s <= *done) continue; /* tcasm: restart, steps done before it */
        memcpy(w + NX, t, sizeof(double) * rows * NX);
        MPI_Sendrecv(w + NX, NX, MPI_DOUBLE, up, 0, w + (size_t)(rows + 1) * NX, NX, MPI_DOUBLE, down, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Sendrecv(w + (size_t)rows * NX, NX, MPI_DOUBLE, down, 1, w, NX, MPI_DOUBLE, up, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        step(w, t, rows, row0);
        *done = s; if (tcasm_publish(tp, NULL)) die(tcasm_last_error()); /* tcasm */
        nanosleep(&delay, NULL);
    }

    /* Rank 0 gathers the global field and writes it where asked. */
    int *counts = calloc(size, sizeof *counts), *starts = calloc(size, sizeof *starts);
    double *field = rank == 0 ? calloc((size_t)NY * NX, sizeof *field) : NULL;
    for (int r = 0; r < size; r++) {
        counts[r] = (NY / size + (r < NY % size)) * NX;
        starts[r] = (r * (NY / size) + (r < NY % size ? r : NY % size)) * NX;
    }
    MPI_Gatherv(t, rows * NX, MPI_DOUBLE, field, counts, starts, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("heat_mpi: %d ranks, %ld steps, t[%d][%d] = %.6f\n", size, steps, NY / 2, NX / 2, field[NY / 2 * NX + NX / 2]);
        FILE *out = argc > 5 ? fopen(argv[5], "wb") : NULL;
        if (argc > 5 && (!out || fwrite(field, sizeof *field, (size_t)NY * NX, out) != (size_t)NY * NX || fclose(out)))
            die("cannot write the field");
    }
    tcasm_producer_destroy(tp); free(done); /* tcasm */
    free(field);
    free(counts);
    free(starts);
    free(t);
    free(w);
    MPI_Finalize();
    return 0;
}
