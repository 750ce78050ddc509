// clip_grad_norm_ takes a model or a range of tensors; the constraint that fails is named.
// expect: ParameterSource
#include <torchkit/clip.hpp>

void clip() { (void)torchkit::clip_grad_norm_(42, 1.0); }
