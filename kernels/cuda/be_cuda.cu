__global__ void kcu_placeholder(void) {}
