/* A small 2-D heat-diffusion simulation, as simulations are written: its arrays come from
 * malloc and it steps them in a loop. The five lines marked tcasm are all it takes to let
 * observer processes (tcasm inspect, a Python notebook, a checkpointer) see a consistent
 * snapshot of the temperature after every step, without slowing it down; three more (and
 * the step counter wrapped as a region too) let it restart from the newest checkpoint
 * `tcasm checkpoint` wrote. Delete them and it is the plain simulation again.
 *
 * Build and run from the repository root:
 *   cargo build --release -p tcasm-capi
 *   cc -O2 -Iinclude examples/heat.c -Ltarget/release -ltcasm -Wl,-rpath,"$PWD/target/release" -o heat
 *   ./heat 1000 10 heat &         # STEPS, MILLISECONDS per step, NAME of the run (and endpoint)
 *   cargo run --release -- inspect heat
 * Checkpoint it, kill it, and restart it from where it was (CHECKPOINT DIRS, level 1 first):
 *   cargo run --release -- checkpoint heat --dir /tmp/ckpt --flush-to /tmp/pfs &
 *   ./heat 1000 10 heat /tmp/ckpt:/tmp/pfs
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tcasm.h" /* tcasm */

enum { NY = 96, NX = 128 };

static void die(const char *why) {
    fprintf(stderr, "heat: %s\n", why);
    exit(1);
}

/* A cold plate with a square heater held at 100 degrees. */
static int heater(int i, int j) {
    return i >= NY / 4 && i < NY / 2 && j >= NX / 4 && j < NX / 2;
}

/* One explicit time step: next = t + a * laplacian(t), edges held at 0. */
static void step(const double *t, double *next) {
    for (int i = 0; i < NY; i++) {
        for (int j = 0; j < NX; j++) {
            const double *c = &t[i * NX + j];
            if (heater(i, j))
                next[i * NX + j] = 100.0;
            else if (i == 0 || j == 0 || i == NY - 1 || j == NX - 1)
                next[i * NX + j] = 0.0;
            else
                next[i * NX + j] = *c + 0.2 * (c[-NX] + c[NX] + c[-1] + c[1] - 4.0 * *c);
        }
    }
}

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 1000;
    long delay_ms = argc > 2 ? atol(argv[2]) : 10;
    const char *name = argc > 3 ? argv[3] : "heat";
    struct timespec delay = { delay_ms / 1000, (delay_ms % 1000) * 1000000L };

    double *t = calloc(NY * NX, sizeof *t), *next = calloc(NY * NX, sizeof *next);
    int64_t *done = calloc(1, sizeof *done); /* tcasm */
    if (!t || !next)
        die("out of memory");
    for (int i = 0; i < NY; i++)
        for (int j = 0; j < NX; j++)
            t[i * NX + j] = heater(i, j) ? 100.0 : 0.0;

    tcasm_producer *tp; /* tcasm */
    if (tcasm_producer_create(name, &tp) || tcasm_wrap(tp, "temperature", TCASM_F64, t, (size_t[]){NY, NX}, 2) || tcasm_wrap(tp, "step", TCASM_I64, done, (size_t[]){1}, 1)) die(tcasm_last_error()); /* tcasm */
    if (argc > 4) switch (tcasm_restore(tp, argv[4], NULL)) { case TCASM_OK: case TCASM_ERR_NO_CHECKPOINT: break; default: die(tcasm_last_error()); } /* tcasm */
    for (long s = 1; s <= steps; s++) {
        if (s <= *done) continue; /* tcasm: steps done before the restart */
        step(t, next);
        memcpy(t, next, sizeof(double) * NY * NX);
        *done = s; if (tcasm_publish(tp, NULL)) die(tcasm_last_error()); /* tcasm */
        nanosleep(&delay, NULL);
    }
    printf("%s: %ld steps, t[%d][%d] = %.6f\n", name, steps, NY / 2, NX / 2, t[NY / 2 * NX + NX / 2]);
    tcasm_producer_destroy(tp); free(done); /* tcasm */
    free(t);
    free(next);
    return 0;
}
