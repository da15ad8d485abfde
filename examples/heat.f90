! A small 2-D heat-diffusion simulation in Fortran over ALLOCATABLE arrays. The six lines
! marked tcasm are all it takes to let observer processes see the temperature after every
! step (tcasm inspect, a Python notebook, a checkpointer); the declaration of t gained the
! TARGET attribute (marked too). Three more restart it from the newest checkpoint (the steps
! done are a region too). Without them it is the plain simulation.
!
! Build and run from the repository root:
!   cargo build --release -p tcasm-capi
!   gfortran -O2 -Jtarget fortran/tcasm.f90 examples/heat.f90 -Ltarget/release -ltcasm \
!       -Wl,-rpath,"$PWD/target/release" -o heat-f
!   ./heat-f 1000 10 heat-f &      ! STEPS, MILLISECONDS per step, endpoint NAME
!   cargo run --release -- inspect heat-f
! Checkpoint it, kill it, and restart it from where it was (CHECKPOINT DIRS, level 1 first):
!   cargo run --release -- checkpoint heat-f --dir /tmp/ckpt --flush-to /tmp/pfs &
!   ./heat-f 1000 10 heat-f /tmp/ckpt:/tmp/pfs
!
! Observers see t(nx, ny) as a region of shape (ny, nx): numpy's a[j-1, i-1] is t(i, j).
program heat
  use, intrinsic :: iso_c_binding, only: c_double, c_int, c_int64_t
  use tcasm ! tcasm
  implicit none
  integer, parameter :: nx = 128, ny = 96
  real(c_double), allocatable, target :: t(:,:) ! tcasm: target
  real(c_double), allocatable :: next(:,:)
  type(tcasm_producer) :: producer; integer(c_int64_t), allocatable, target :: done ! tcasm
  integer :: steps, delay_ms, s, i, j
  character(4096) :: arg, name  ! room for checkpoint paths: a cut one would restart nothing

  interface
    integer(c_int) function usleep(us) bind(C, name="usleep")
      import :: c_int
      integer(c_int), value :: us
    end function
  end interface

  steps = 1000
  delay_ms = 10
  name = "heat-f"
  if (command_argument_count() >= 1) then
    call get_command_argument(1, arg)
    read (arg, *) steps
  end if
  if (command_argument_count() >= 2) then
    call get_command_argument(2, arg)
    read (arg, *) delay_ms
  end if
  if (command_argument_count() >= 3) call get_command_argument(3, name)

  allocate(t(nx, ny), next(nx, ny))
  do j = 1, ny
    do i = 1, nx
      t(i, j) = merge(100.0_c_double, 0.0_c_double, heater(i, j))
    end do
  end do

  call tcasm_create(producer, trim(name)) ! tcasm
  call tcasm_wrap(producer, "temperature", t) ! tcasm
  allocate(done, source=0_c_int64_t); call tcasm_wrap(producer, "step", done) ! tcasm
  call get_command_argument(4, arg); if (len_trim(arg) > 0) call tcasm_restore(producer, trim(arg)) ! tcasm
  do s = 1, steps
    if (s <= done) cycle ! tcasm: steps done before the restart
    call step(t, next)
    t = next
    done = s; call tcasm_publish(producer) ! tcasm
    if (delay_ms > 0) i = usleep(int(delay_ms * 1000, c_int))
  end do
  print '(a, i0, a, f0.6)', "heat-f: ", steps, " steps, t(65, 49) = ", t(nx / 2 + 1, ny / 2 + 1)
  call tcasm_destroy(producer) ! tcasm
  deallocate(t, next)

contains

  ! A cold plate with a square heater held at 100 degrees (the C example's, transposed).
  logical function heater(i, j)
    integer, intent(in) :: i, j
    heater = j - 1 >= ny / 4 .and. j - 1 < ny / 2 .and. i - 1 >= nx / 4 .and. i - 1 < nx / 2
  end function

  ! One explicit time step: next = t + a * laplacian(t), edges held at 0.
  subroutine step(t, next)
    real(c_double), intent(in) :: t(:,:)
    real(c_double), intent(out) :: next(:,:)
    integer :: i, j
    do j = 1, ny
      do i = 1, nx
        if (heater(i, j)) then
          next(i, j) = 100.0_c_double
        else if (i == 1 .or. j == 1 .or. i == nx .or. j == ny) then
          next(i, j) = 0.0_c_double
        else
          next(i, j) = t(i, j) + 0.2_c_double * (t(i, j - 1) + t(i, j + 1) + t(i - 1, j) + t(i + 1, j) &
                                                 - 4.0_c_double * t(i, j))
        end if
      end do
    end do
  end subroutine

end program heat
