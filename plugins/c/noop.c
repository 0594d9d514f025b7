/* noop: does nothing and succeeds; `noop N` first spins N rounds of
 * arithmetic. The benchmarks use it to measure what a plugin step costs
 * kiln apart from the guest's work, and how plugin steps use the cores. */
#include <stdlib.h>

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 0;
    volatile unsigned long x = 1;
    for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return 0;
}
