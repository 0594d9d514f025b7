/* noop: does nothing and succeeds. The benchmarks use it to measure what a
 * plugin step costs kiln, apart from the guest's own work. */
int main(void) { return 0; }
