/* The pod sandbox ("pause") process: holds the pod's namespaces, reaps orphaned children
 * (it is PID 1 when the pod shares its PID namespace) and exits on SIGINT/SIGTERM.
 * Upstream's is build/pause/linux/pause.c in kubernetes; this is the same behaviour, built
 * locally (static) because no registry is reachable in the tests. tests/images/build.sh. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(sig == SIGINT || sig == SIGTERM ? 0 : 1); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, chld = {.sa_handler = reap,
                                                       .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &chld, NULL) < 0)
    return 1;
  for (;;) pause();
}
