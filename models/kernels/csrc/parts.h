/* How a kernel call is split over threads.
 *
 * Every entry point takes the bounds of its parts, computed in Python (models/kernels/backend.py,
 * for_native): parts[2k] and parts[2k + 1] delimit part k, for k < nparts, in the kernel's own
 * index (elements, columns, rows or planes). Each part runs the kernel's serial body on one
 * OpenMP thread. The library links to libgomp by its soname, so inside PyTorch it shares the
 * runtime and the threads PyTorch already loaded and keeps warm between its own operations:
 * starting a part costs microseconds, where handing it to a Python thread cost a tenth of a
 * millisecond. Built without OpenMP the pragma is ignored and the parts run one after the other
 * (Python then hands them out one at a time instead). A kernel's result does not depend on how
 * it runs: the parts write disjoint outputs, and per-part sums are added in Python in a fixed order.
 */
#define PARTS const int64_t *parts, int64_t nparts
#define LO(k) parts[2 * (k)]
#define HI(k) parts[2 * (k) + 1]
#define FOR_EACH_PART(k) \
    _Pragma("omp parallel for num_threads((int)nparts) schedule(static, 1) if (nparts > 1)") \
    for (int64_t k = 0; k < nparts; ++k)
