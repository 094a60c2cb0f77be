/* A tiny thread pool for the forward pass: the caller is thread 0, workers spin briefly on a
 * generation counter (decode steps come every few hundred microseconds) and then sleep on a
 * condition variable, so an idle engine uses no CPU. Every wait yields the core after a few
 * pause instructions: on a busy machine a waiting thread must not keep a core from the thread
 * it waits for (or from another program), which plain spinning did (a busy process on 2 cores
 * cut decoding to a fraction). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "plm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ROUNDS 2000 /* ~ a millisecond of waiting (yields take ~0.5 us idle) before sleeping */
#define PAUSES_BEFORE_YIELD 64 /* ~ a microsecond: on an idle machine the answer comes first */

/* One round of waiting: a pause, then (after the first few) a yield of the core. */
static inline void wait_round(int spins) {
    if (spins < PAUSES_BEFORE_YIELD) CPU_RELAX();
    else sched_yield();
}

struct plm_pool {
    int n;
    pthread_t *threads;
    atomic_uint generation;
    atomic_int active;    /* workers inside (or about to enter) the current task */
    atomic_uint closed;   /* the last generation whose work is all taken: late workers skip it */
    atomic_int stop;
    plm_task_fn fn;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_mutex_t run_lock; /* one task at a time when several callers share the pool */
    int refs;                 /* models sharing this pool (plm_pool_acquire) */
};

typedef struct {
    plm_pool *pool;
    int ith;
    unsigned seen; /* the generation at creation: a task posted before the thread runs is not missed */
} worker_arg;

static void *worker(void *p) {
    worker_arg *wa = (worker_arg *)p;
    plm_pool *pool = wa->pool;
    const int ith = wa->ith;
    unsigned seen = wa->seen;
    free(wa);
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen && !atomic_load(&pool->stop)) {
            if (++spins < SPIN_ROUNDS) {
                wait_round(spins);
            } else {
                pthread_mutex_lock(&pool->lock);
                while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop)) pthread_cond_wait(&pool->wake, &pool->lock);
                pthread_mutex_unlock(&pool->lock);
                spins = 0;
            }
        }
        if (atomic_load(&pool->stop)) return NULL;
        /* Announce ourselves, then look again at which task is current and whether its work is
           already all taken (seq_cst both sides: either the caller sees us and waits, or we see
           the task closed and leave its argument alone, which may be gone). */
        atomic_fetch_add(&pool->active, 1);
        gen = atomic_load(&pool->generation);
        if (atomic_load(&pool->closed) != gen) pool->fn(pool->arg, ith, pool->n);
        seen = gen;
        atomic_fetch_sub(&pool->active, 1);
    }
}

void plm_ranges_init(plm_range *ranges, int n_ranges, int total) {
    for (int i = 0; i < n_ranges; i++) {
        const uint64_t front = (uint64_t)((long long)total * i / n_ranges), back = (uint64_t)((long long)total * (i + 1) / n_ranges);
        atomic_init(&ranges[i].front_back, front << 32 | back);
    }
}

/* Take from the front of range `i` (its owner) or from its back (a thief). */
static int take(plm_range *r, int from_front) {
    uint64_t v = atomic_load_explicit(&r->front_back, memory_order_relaxed);
    for (;;) {
        const uint32_t front = (uint32_t)(v >> 32), back = (uint32_t)v;
        if (front >= back) return -1;
        const uint64_t next = from_front ? (uint64_t)(front + 1) << 32 | back : (uint64_t)front << 32 | (back - 1);
        if (atomic_compare_exchange_weak_explicit(&r->front_back, &v, next, memory_order_relaxed, memory_order_relaxed))
            return (int)(from_front ? front : back - 1);
    }
}

int plm_ranges_next(plm_range *ranges, int n_ranges, int ith) {
    const int own = ith % n_ranges;
    int c = take(&ranges[own], 1);
    for (int k = 1; c < 0 && k < n_ranges; k++) c = take(&ranges[(own + k) % n_ranges], 0);
    return c;
}

plm_pool *plm_pool_create(int n_threads) {
    plm_pool *pool = (plm_pool *)calloc(1, sizeof(plm_pool));
    if (!pool) return NULL;
    pool->n = n_threads < 1 ? 1 : (n_threads > PLM_MAX_THREADS ? PLM_MAX_THREADS : n_threads);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->active, 0);
    atomic_init(&pool->closed, 0);
    atomic_init(&pool->stop, 0);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_mutex_init(&pool->run_lock, NULL);
    pool->threads = (pthread_t *)calloc((size_t)pool->n, sizeof(pthread_t));
    for (int i = 1; i < pool->n; i++) {
        worker_arg *wa = (worker_arg *)malloc(sizeof(worker_arg));
        wa->pool = pool;
        wa->ith = i;
        wa->seen = atomic_load(&pool->generation);
        pthread_create(&pool->threads[i], NULL, worker, wa);
    }
    return pool;
}

int plm_pool_size(const plm_pool *pool) { return pool->n; }

/* Run fn(arg, ith, n) on the caller and the workers. Tasks share their work dynamically (chunks
 * taken from a counter), so the caller does not wait for a worker that has not started yet: once
 * its own fn returns, all work is taken; it closes the task and waits only for the workers
 * already inside it. A worker that lost its core to another program cannot stall a step. */
void plm_pool_run(plm_pool *pool, plm_task_fn fn, void *arg) {
    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->run_lock);
    pool->fn = fn;
    pool->arg = arg;
    pthread_mutex_lock(&pool->lock);
    const unsigned gen = atomic_fetch_add(&pool->generation, 1) + 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    fn(arg, 0, pool->n);
    atomic_store(&pool->closed, gen);
    for (int spins = 0; atomic_load(&pool->active) > 0; spins++) wait_round(spins);
    pthread_mutex_unlock(&pool->run_lock);
}

/* Models in one process share one pool per thread count: two pools would each keep a worker
 * spinning between steps, and with a draft and a target model (speculative decoding) alternating
 * every few hundred microseconds the idle pool's spinning worker took a core from the busy one
 * (measured: 6x slower). */
#define SHARED_MAX 8
static plm_pool *shared[SHARED_MAX];
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;

plm_pool *plm_pool_acquire(int n_threads) {
    const int n = n_threads < 1 ? 1 : (n_threads > PLM_MAX_THREADS ? PLM_MAX_THREADS : n_threads);
    plm_pool *found = NULL;
    pthread_mutex_lock(&shared_lock);
    for (int i = 0; i < SHARED_MAX && !found; i++)
        if (shared[i] && shared[i]->n == n) found = shared[i];
    if (!found) {
        found = plm_pool_create(n);
        for (int i = 0; found && i < SHARED_MAX; i++)
            if (!shared[i]) { shared[i] = found; break; }
    }
    if (found) found->refs++;
    pthread_mutex_unlock(&shared_lock);
    return found;
}

void plm_pool_release(plm_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&shared_lock);
    int last = --pool->refs <= 0;
    if (last)
        for (int i = 0; i < SHARED_MAX; i++)
            if (shared[i] == pool) shared[i] = NULL;
    pthread_mutex_unlock(&shared_lock);
    if (last) plm_pool_destroy(pool);
}

void plm_pool_destroy(plm_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->run_lock);
    free(pool->threads);
    free(pool);
}
