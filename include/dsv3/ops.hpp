// dsv3/ops.hpp — kept so that existing #includes still compile: the model's ops: reference/ops.hpp (their definitions) and cpu/linear.hpp (the CPU kernels).
#pragma once

#include "tensor.hpp"
#include "reference/ops.hpp"
#include "cpu/linear.hpp"
