// Precompiled header for torchkit's tests: LibTorch, doctest and nlohmann/json are parsed
// once for every test file.
#pragma once
#include <torch/torch.h>
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <fmt/format.h>
