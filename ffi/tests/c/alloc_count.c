/* presently_client_record_activity allocates nothing: this program defines malloc and friends itself (forwarding
 * to glibc's __libc_* functions) and counts the calls made on the calling thread.
 * Usage: alloc_count URL TOKEN. Linux/glibc only (the test that runs it says so). */
#define _DEFAULT_SOURCE
#include "presently.h"

#include <stdio.h>
#include <stdlib.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static __thread unsigned long allocations;

void *malloc(size_t n) { allocations++; return __libc_malloc(n); }
void *calloc(size_t n, size_t m) { allocations++; return __libc_calloc(n, m); }
void *realloc(void *p, size_t n) { allocations++; return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { allocations++; return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
  allocations++;
  *out = __libc_memalign(a, n);
  return *out ? 0 : 12;
}
void *aligned_alloc(size_t a, size_t n) { allocations++; return __libc_memalign(a, n); }
void free(void *p) { __libc_free(p); }

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  PresentlyConfig *config = NULL;
  PresentlyClient *client = NULL;
  if (presently_config_new(argv[1], &config) != PRESENTLY_RESULT_OK) return 1;
  if (presently_config_set_token(config, argv[2]) != PRESENTLY_RESULT_OK) return 1;
  if (presently_client_new(config, &client) != PRESENTLY_RESULT_OK) return 1;
  presently_config_free(config);
  /* The counter works: creating a client allocates. */
  if (allocations == 0) {
    fprintf(stderr, "the allocation counter saw nothing\n");
    return 1;
  }
  presently_client_record_activity(client); /* warm up */
  unsigned long before = allocations;
  for (int i = 0; i < 1000000; i++) presently_client_record_activity(client);
  unsigned long during = allocations - before;
  printf("allocations during 1000000 record_activity calls: %lu\n", during);
  presently_client_free(client);
  return during == 0 ? 0 : 1;
}
