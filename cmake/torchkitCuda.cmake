# Switches torchkit's CUDA code paths on for a target when the Torch found was built with CUDA.
# Used by torchkit's own build and by the installed package (torchkitConfig.cmake), so that a
# consumer's Torch decides, never the Torch torchkit happened to be built against.
# Single-header users without CMake define TORCHKIT_WITH_CUDA=1 themselves.
function(torchkit_enable_cuda_if_available target)
  if(CAFFE2_USE_CUDA OR TORCH_CUDA_LIBRARIES)
    get_target_property(_torchkit_aliased ${target} ALIASED_TARGET)
    if(_torchkit_aliased)
      set(target ${_torchkit_aliased})
    endif()
    set_property(TARGET ${target} APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS TORCHKIT_WITH_CUDA=1)
  endif()
endfunction()
