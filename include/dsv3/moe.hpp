// dsv3/moe.hpp — kept so that existing #includes still compile: the MoE layer: reference/moe.hpp (the definition, eqs. 12–16) and cpu/moe.hpp (the CPU kernel).
#pragma once

#include "reference/moe.hpp"
#include "cpu/moe.hpp"
