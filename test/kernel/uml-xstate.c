/*
 * LD_PRELOAD for User-Mode Linux 6.1 (the test/kernel/vm.sh guest) on hosts whose XSAVE area is
 * larger than UML's buffer (AMX, AVX-512: "ptrace set fp regs failed, errno = 14", then a panic).
 * The host's PTRACE_SETREGSET(NT_X86_XSTATE) only takes the whole XSAVE area, and UML hands it
 * its own smaller one. This ptrace() wrapper reads the whole area on GETREGSET (kept per UML
 * buffer, i.e. per guest thread, and cut to UML's size for UML) and on SETREGSET writes UML's
 * part over the kept whole area. Disabling XSTATE instead (the FXSR fallback) loses the AVX
 * upper state at every guest page fault, which silently breaks glibc's string functions.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_XSTATE 32768
#define SLOTS 4096 /* open addressing, keyed by UML's per-thread buffer address */

struct slot {
  void *key;
  size_t len;
  unsigned char *buf;
};
static struct slot slots[SLOTS];

static struct slot *lookup(void *key) {
  size_t h = ((uintptr_t)key >> 4) * 2654435761u;
  for (size_t i = 0; i < SLOTS; i++) {
    struct slot *s = &slots[(h + i) % SLOTS];
    if (s->key == key) return s;
    if (s->key == NULL) {
      s->buf = malloc(MAX_XSTATE);
      if (!s->buf) return NULL;
      s->key = key;
      s->len = 0;
      return s;
    }
  }
  return NULL;
}

static long raw_regset(long req, pid_t pid, void *buf, size_t *len) {
  struct iovec iov = {buf, *len};
  long r = syscall(SYS_ptrace, req, pid, (void *)NT_X86_XSTATE, &iov);
  if (r == 0) *len = iov.iov_len;
  return r;
}

long ptrace(enum __ptrace_request req, ...) {
  va_list ap;
  va_start(ap, req);
  pid_t pid = va_arg(ap, pid_t);
  void *addr = va_arg(ap, void *);
  void *data = va_arg(ap, void *);
  va_end(ap);

  if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) && (uintptr_t)addr == NT_X86_XSTATE && data) {
    struct iovec *iov = data;
    struct slot *s = lookup(iov->iov_base);
    if (s) {
      if (req == PTRACE_GETREGSET) {
        size_t len = MAX_XSTATE;
        if (raw_regset(PTRACE_GETREGSET, pid, s->buf, &len) < 0) return -1;
        s->len = len;
        size_t n = iov->iov_len < len ? iov->iov_len : len;
        memcpy(iov->iov_base, s->buf, n);
        iov->iov_len = n;
        return 0;
      }
      if (s->len == 0) { /* never read through this buffer (a new thread): start from the current state */
        size_t len = MAX_XSTATE;
        if (raw_regset(PTRACE_GETREGSET, pid, s->buf, &len) < 0) return -1;
        s->len = len;
      }
      size_t n = iov->iov_len < s->len ? iov->iov_len : s->len;
      memcpy(s->buf, iov->iov_base, n);
      size_t len = s->len;
      return raw_regset(PTRACE_SETREGSET, pid, s->buf, &len);
    }
  }
  static long (*real)(enum __ptrace_request, ...);
  if (!real) real = (long (*)(enum __ptrace_request, ...))dlsym(RTLD_NEXT, "ptrace");
  return real(req, pid, addr, data);
}
