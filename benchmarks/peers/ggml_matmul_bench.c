/* Time ggml's batch-1 ggml_mul_mat on one quantized weight type: y (out) = W (out x in) x (in).
 *
 *   ggml_matmul_bench TYPE OUT IN THREADS RING REPEATS
 *
 * TYPE is tq2_0, tq1_0, q8_0 or f32. RING distinct weight matrices are made (random ternary values, quantized by
 * ggml_quantize_chunk) and used in turn: RING = 1 times one matrix again and again ("hot"); a ring whose total
 * size exceeds the last-level cache times weights streamed from DRAM ("cold"). x is float32; ggml converts it to
 * the type's activation format (Q8_K for TQ1_0/TQ2_0, Q8_0 for Q8_0) inside the product, as in llama.cpp's
 * decode. One persistent ggml threadpool of THREADS threads is used for every call.
 *
 * Prints one line: "TYPE OUT IN THREADS RING median_us min_us weight_bytes". Uses only ggml's public API
 * (ggml.h, ggml-cpu.h); build with benchmarks/peers/build.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-cpu.h"

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_next(void) { /* xorshift64*: reproducible weights without libc rand */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s TYPE(tq2_0|tq1_0|q8_0|f32) OUT IN THREADS RING REPEATS\n", argv[0]);
        return 2;
    }
    enum ggml_type type;
    if (!strcmp(argv[1], "tq2_0")) type = GGML_TYPE_TQ2_0;
    else if (!strcmp(argv[1], "tq1_0")) type = GGML_TYPE_TQ1_0;
    else if (!strcmp(argv[1], "q8_0")) type = GGML_TYPE_Q8_0;
    else if (!strcmp(argv[1], "f32")) type = GGML_TYPE_F32;
    else { fprintf(stderr, "TYPE must be tq2_0, tq1_0, q8_0 or f32, got %s\n", argv[1]); return 2; }
    const int64_t n_out = atoll(argv[2]), n_in = atoll(argv[3]);
    const int n_threads = atoi(argv[4]), ring = atoi(argv[5]), repeats = atoi(argv[6]);
    if (n_out < 1 || n_in < 256 || n_in % 256 || n_threads < 1 || ring < 1 || repeats < 1) {
        fprintf(stderr, "need OUT >= 1, IN a multiple of 256, THREADS, RING, REPEATS >= 1\n");
        return 2;
    }

    const size_t w_bytes = ggml_row_size(type, n_in) * n_out;
    /* per matrix of the ring: its weights, its output, two tensor headers and one graph (ggml_new_graph's
       default size, ~160 KiB: a large ring needs it counted); then x and some slack */
    const size_t mem = ring * (w_bytes + ggml_row_size(GGML_TYPE_F32, n_out) + 2 * ggml_tensor_overhead()
                               + ggml_graph_overhead()) + ggml_row_size(GGML_TYPE_F32, n_in) + (16u << 20);
    struct ggml_init_params ip = { mem, NULL, false };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx) { fprintf(stderr, "ggml_init failed for %zu bytes\n", mem); return 1; }
    ggml_cpu_init();

    struct ggml_tensor *x = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n_in);
    float *xf = (float *)x->data;
    for (int64_t i = 0; i < n_in; i++) xf[i] = (float)((int)(rng_next() % 255) - 127) / 127.0f;

    float *wf = (float *)malloc(sizeof(float) * n_in * n_out);
    struct ggml_cgraph **graphs = (struct ggml_cgraph **)malloc(sizeof(*graphs) * ring);
    for (int r = 0; r < ring; r++) {
        struct ggml_tensor *w = ggml_new_tensor_2d(ctx, type, n_in, n_out);
        for (int64_t i = 0; i < n_in * n_out; i++) wf[i] = (float)((int)(rng_next() % 3) - 1);
        if (type == GGML_TYPE_F32) memcpy(w->data, wf, sizeof(float) * n_in * n_out);
        else ggml_quantize_chunk(type, wf, w->data, 0, n_out, n_in, NULL);
        struct ggml_tensor *y = ggml_mul_mat(ctx, w, x);
        graphs[r] = ggml_new_graph(ctx);
        ggml_build_forward_expand(graphs[r], y);
    }
    free(wf);

    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    struct ggml_cplan plan = ggml_graph_plan(graphs[0], n_threads, tp);
    uint8_t *work = (uint8_t *)malloc(plan.work_size + 64);
    plan.work_data = work;

    for (int r = 0; r < ring; r++) ggml_graph_compute(graphs[r], &plan); /* warm up: every matrix once */
    double *t = (double *)malloc(sizeof(double) * repeats);
    for (int k = 0; k < repeats; k++) {
        double t0 = now_us();
        ggml_graph_compute(graphs[k % ring], &plan);
        t[k] = now_us() - t0;
    }
    qsort(t, repeats, sizeof(double), cmp_double);
    printf("%s %lld %lld %d %d %.2f %.2f %zu\n", argv[1], (long long)n_out, (long long)n_in, n_threads, ring,
           t[repeats / 2], t[0], w_bytes);
    ggml_threadpool_free(tp);
    free(work); free(t); free(graphs);
    ggml_free(ctx);
    return 0;
}
