// The stn_ext op library: its schemas, and the Python module whose import registers them with
// every kernel compiled into the same shared object (csrc/cpu, csrc/cuda, csrc/autograd).
#include <Python.h>
#include <torch/library.h>

#include "affine_grid_sample.h"
#include "grid_sample.h"

namespace stn_ext {

TORCH_LIBRARY(stn_ext, m) {
  m.def(kAffineGridSampleSchema);
  m.def(kAffineGridSampleBackwardSchema);
  m.def(kGridSampleSchema);
  m.def(kGridSampleBackwardSchema);
  m.def(kAffineSampleSchema);
  m.def(kAffineSampleBackwardSchema);
}

}  // namespace stn_ext

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
